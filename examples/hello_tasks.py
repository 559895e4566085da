"""Tasks on a launch cluster. Run it from your machine after `launch up configs/local.yaml`:

    .venv/bin/python examples/hello_tasks.py
or ship it to the cluster as a job:

    launch submit configs/local.yaml examples/hello_tasks.py -- 8
"""

import os
import socket
import sys

import runtime

runtime.init()  # the cluster `launch up` started, or, inside a job, the cluster it runs on


@runtime.remote(num_cpus=1)
def square(x):
    return x * x, os.environ["LAUNCH_NODE_ID"]


@runtime.remote
def total(*parts):
    return sum(p[0] for p in parts)


@runtime.remote(num_gpus=1)
def on_gpu():
    return os.environ["CUDA_VISIBLE_DEVICES"]


n = int(sys.argv[1]) if len(sys.argv) > 1 else 6
parts = [square.remote(i) for i in range(n)]
for value, node in runtime.get(parts):
    print(f"square -> {value:3d} on {node}")
print("total of squares:", runtime.get(total.remote(*parts)))  # futures as arguments

ref = on_gpu.remote()  # no gpu node is up: the task waits as demand, and the autoscaler launches one
ready, _ = runtime.wait([ref], timeout=120)
if ready:
    print("GPU task ran with CUDA_VISIBLE_DEVICES =", runtime.get(ref))
else:
    print("GPU task still queued after 2 minutes (is the autoscaler on?); cancelling it:", runtime.cancel(ref))
print(f"done (driver on {socket.gethostname()}, pid {os.getpid()})")
