"""ray.util.ActorPool: map in order, map_unordered, submit/get_next, has_free/pop_idle/push."""
import ray
from ray.util import ActorPool

ray.init()


@ray.remote
class Doubler:
    def double(self, v):
        return 2 * v


a1, a2 = Doubler.remote(), Doubler.remote()
pool = ActorPool([a1, a2])
assert list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3, 4])) == [2, 4, 6, 8]
assert sorted(pool.map_unordered(lambda a, v: a.double.remote(v), range(10))) == [2 * v for v in range(10)]

pool.submit(lambda a, v: a.double.remote(v), 1)
pool.submit(lambda a, v: a.double.remote(v), 2)
pool.submit(lambda a, v: a.double.remote(v), 3)  # queued: both actors are busy
assert pool.has_next() and not pool.has_free()
assert [pool.get_next(), pool.get_next(), pool.get_next()] == [2, 4, 6]
assert not pool.has_next()
try:
    pool.get_next()
except StopIteration:
    pass
else:
    raise AssertionError("get_next() past the end")

idle = pool.pop_idle()
assert idle is not None
assert list(pool.map(lambda a, v: a.double.remote(v), [5, 6])) == [10, 12]  # on the one left
pool.push(idle)
assert pool.has_free()
print("OK")
