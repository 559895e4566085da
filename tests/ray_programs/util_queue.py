"""ray.util.queue.Queue: shared by the driver, tasks and actors; blocking, timed and batch calls."""
import ray
from ray.util.queue import Empty, Full, Queue

ray.init()

q = Queue(maxsize=3)
q.put(1)
q.put_nowait_batch([2, 3])
assert q.size() == 3 and q.full() and not q.empty()
try:
    q.put(4, timeout=0.5)
except Full:
    pass
else:
    raise AssertionError("a full queue took an item")
assert [q.get(), q.get_nowait()] == [1, 2]
assert q.get_nowait_batch(1) == [3]
try:
    q.get(timeout=0.5)
except Empty:
    pass
else:
    raise AssertionError("an empty queue gave an item")
try:
    q.get_nowait()
except Empty:
    pass
else:
    raise AssertionError("an empty queue gave an item")


@ray.remote
def producer(queue, n):
    for i in range(n):
        queue.put(i)
    return n


@ray.remote
class Consumer:
    def __init__(self, queue):
        self.queue = queue

    def take(self, n):
        return [self.queue.get(timeout=30) for _ in range(n)]


big = Queue()
consumer = Consumer.remote(big)
taken = consumer.take.remote(10)  # waits in the actor while the task produces
assert ray.get(producer.remote(big, 10)) == 10
assert sorted(ray.get(taken)) == list(range(10))
assert big.empty()
big.shutdown()
print("OK")
