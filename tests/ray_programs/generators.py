"""Generator tasks: a task (or actor method) that yields gives its values' refs as they are made."""
import time

import ray

ray.init()


@ray.remote
def countdown(n, pause):
    for i in range(n, 0, -1):
        time.sleep(pause)
        yield i


start = time.time()
gen = countdown.remote(4, 0.5)
first = next(gen)
assert ray.get(first) == 4
assert time.time() - start < 1.8, "the first value came only with the last"
assert [ray.get(r) for r in gen] == [3, 2, 1]


@ray.remote(num_returns="streaming")
def letters():
    for letter in "abc":
        yield letter


assert [ray.get(r) for r in letters.remote()] == ["a", "b", "c"]


@ray.remote
def fails_midway():
    yield 1
    yield 2
    raise RuntimeError("midway")


refs = list(fails_midway.remote())
assert [ray.get(r) for r in refs[:2]] == [1, 2]
try:
    ray.get(refs[2])
except RuntimeError as e:
    assert "midway" in str(e)
else:
    raise AssertionError("the error of a failed generator is raised by the ref after its last value")


@ray.remote
def consume(x):
    return x * 10


assert ray.get([consume.remote(r) for r in countdown.remote(3, 0)]) == [30, 20, 10]


@ray.remote
class Streamer:
    def items(self, n):
        for i in range(n):
            yield i * i

    async def aitems(self, n):
        for i in range(n):
            yield -i


s = Streamer.remote()
assert [ray.get(r) for r in s.items.remote(4)] == [0, 1, 4, 9]
assert [ray.get(r) for r in s.aitems.remote(3)] == [0, -1, -2]
print("OK")
