"""num_returns: a task (or an actor method) that returns several values gives one ref per value."""
import ray

ray.init()


@ray.remote(num_returns=3)
def three():
    return 1, 2, 3


a, b, c = three.remote()
assert ray.get([a, b, c]) == [1, 2, 3]
assert ray.get(c) == 3


@ray.remote
def pair(x):
    return x, x * 2


x, y = pair.options(num_returns=2).remote(5)
assert (ray.get(x), ray.get(y)) == (5, 10)


@ray.remote
def add(p, q):
    return p + q


assert ray.get(add.remote(x, y)) == 15  # each ref passes on as its own value


@ray.remote(num_returns=2)
def fails():
    raise KeyError("no such thing")


r1, r2 = fails.remote()
for r in (r1, r2):
    try:
        ray.get(r)
    except KeyError:
        pass
    else:
        raise AssertionError("a failed task's every return must raise its error")


@ray.remote
class Splitter:
    @ray.method(num_returns=2)
    def split(self, s):
        head, _, tail = s.partition(" ")
        return head, tail

    def whole(self, s):
        return s


s = Splitter.remote()
h, t = s.split.remote("hello world")
assert ray.get([h, t]) == ["hello", "world"]
u, v = s.whole.options(num_returns=2).remote(("u", "v"))
assert ray.get([u, v]) == ["u", "v"]
assert ray.get(s.whole.remote("one")) == "one"
print("OK")
