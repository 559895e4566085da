print("hello from a file mount")
