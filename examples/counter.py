"""An actor: a counter whose state lives on the cluster. After `launch up configs/local.yaml`:

    .venv/bin/python examples/counter.py
or as a job on the cluster:

    launch submit configs/local.yaml examples/counter.py
"""

import runtime

runtime.init()


@runtime.remote
class Counter:
    def __init__(self, start=0):
        self.n = start

    def incr(self, by=1):
        self.n += by
        return self.n


@runtime.remote(num_cpus=0)
def bump(counter, by):
    return runtime.get(counter.incr.remote(by))


c = Counter.options(name="example-counter").remote(10)
print("in order:", runtime.get([c.incr.remote() for _ in range(3)]))  # [11, 12, 13]
print("from a task:", runtime.get(bump.remote(c, 100)))               # 113
same = runtime.get_actor("example-counter")
print("by name:", runtime.get(same.incr.remote()))                    # 114
runtime.kill(c)
