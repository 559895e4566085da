"""Actors as Ray's documentation teaches them: async methods interleaved on the actor's loop, threaded
actors (max_concurrency), named and detached actors in namespaces, get_if_exists, restarts."""
import asyncio
import threading
import time

import ray

ray.init(namespace="conformance")


@ray.remote
class AsyncActor:
    def __init__(self):
        self.inside = 0
        self.most = 0

    async def run(self, seconds):
        self.inside += 1
        self.most = max(self.most, self.inside)
        await asyncio.sleep(seconds)
        self.inside -= 1
        return seconds

    async def most_at_once(self):
        return self.most

    def plain(self):
        return "plain"


a = AsyncActor.remote()
start = time.time()
assert ray.get([a.run.remote(1.0) for _ in range(10)]) == [1.0] * 10
assert time.time() - start < 5, "async calls did not interleave"
assert ray.get(a.most_at_once.remote()) == 10
assert ray.get(a.plain.remote()) == "plain"


@ray.remote
class Limited:
    async def run(self, seconds):
        await asyncio.sleep(seconds)
        return seconds


lim = Limited.options(max_concurrency=2).remote()
start = time.time()
ray.get([lim.run.remote(0.5) for _ in range(4)])
took = time.time() - start
assert took >= 0.95, f"max_concurrency=2 ran 4 half-second calls in {took:.2f}s"


@ray.remote(max_concurrency=4)
class Threaded:
    def __init__(self):
        self.lock = threading.Lock()
        self.threads = set()

    def work(self, seconds):
        with self.lock:
            self.threads.add(threading.get_ident())
        time.sleep(seconds)
        return seconds

    def thread_count(self):
        return len(self.threads)


t = Threaded.remote()
start = time.time()
ray.get([t.work.remote(1.0) for _ in range(4)])
assert time.time() - start < 3.5, "threaded calls did not run at once"
assert ray.get(t.thread_count.remote()) > 1


# awaiting refs in async code
@ray.remote
def square(x):
    return x * x


@ray.remote
class Awaiter:
    async def total(self, n):
        refs = [square.remote(i) for i in range(n)]
        return sum(await asyncio.gather(*refs))


assert ray.get(Awaiter.remote().total.remote(5)) == 30


# named, detached, in this driver's namespace; get_if_exists
@ray.remote
class Counter:
    def __init__(self):
        self.n = 0

    def incr(self):
        self.n += 1
        return self.n


c = Counter.options(name="counter", lifetime="detached").remote()
assert ray.get(c.incr.remote()) == 1
same = Counter.options(name="counter", get_if_exists=True).remote()
assert ray.get(same.incr.remote()) == 2
assert ray.get(ray.get_actor("counter").incr.remote()) == 3
assert ray.get(ray.get_actor("counter", namespace="conformance").incr.remote()) == 4
try:
    ray.get_actor("counter", namespace="elsewhere")
except ValueError:
    pass
else:
    raise AssertionError("a name is found only in its namespace")
ray.kill(c)


# kill(no_restart=False) restarts an actor that may restart
@ray.remote(max_restarts=1)
class Phoenix:
    def __init__(self):
        self.calls = 0

    def call(self):
        self.calls += 1
        return self.calls


p = Phoenix.remote()
assert ray.get(p.call.remote()) == 1
assert ray.get(p.call.remote()) == 2
ray.kill(p, no_restart=False)  # (asynchronous: a call sent at once may still meet the old one)
deadline = time.time() + 60
while True:
    try:
        if ray.get(p.call.remote(), timeout=60) == 1:  # made again: its state starts over
            break
    except ray.exceptions.ActorUnavailableError:  # on its way back
        pass
    assert time.time() < deadline, "the actor did not come back"
    time.sleep(0.1)
ray.kill(p)
print("OK")
