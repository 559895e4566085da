"""ray.put, and ObjectRefs passed to tasks and actors: top-level refs arrive as values, refs nested in
lists and dicts arrive as refs (Ray's rule)."""
import ray

ray.init()

big = list(range(100_000))
ref = ray.put(big)
assert ray.get(ref) == big
assert isinstance(ref, ray.ObjectRef)


@ray.remote
def total(values):
    return sum(values)


@ray.remote
def nested(holder):
    (inner,) = holder["refs"]
    assert isinstance(inner, ray.ObjectRef), type(inner)
    return sum(ray.get(inner))


@ray.remote
def in_list(refs):
    assert all(isinstance(r, ray.ObjectRef) for r in refs)
    return sum(sum(v) for v in ray.get(refs))


assert ray.get(total.remote(ref)) == sum(big)  # top level: the value
assert ray.get(nested.remote({"refs": [ref]})) == sum(big)  # nested: a ref
assert ray.get(in_list.remote([ref, ray.put([1, 2])])) == sum(big) + 3
# one put, many tasks
assert ray.get([total.remote(ref) for _ in range(5)]) == [sum(big)] * 5


@ray.remote
class Holder:
    def __init__(self, values):
        self.values = values

    def size(self):
        return len(self.values)

    def add(self, more):
        return len(self.values) + len(more)


h = Holder.remote(ref)
assert ray.get(h.size.remote()) == len(big)
assert ray.get(h.add.remote(ray.put([0] * 7))) == len(big) + 7

# a large value (over a message's size) put, passed and fetched
blob = b"x" * (8 * 1024 * 1024)
blob_ref = ray.put(blob)
assert ray.get(total.remote([len(blob)])) == len(blob)


@ray.remote
def size_of(b):
    return len(b)


assert ray.get(size_of.remote(blob_ref)) == len(blob)
assert ray.get(blob_ref) == blob

# ray.wait on puts: already ready
ready, not_ready = ray.wait([ref, blob_ref], num_returns=2, timeout=10)
assert len(ready) == 2 and not not_ready

try:
    ray.put(ref)
except TypeError:
    pass
else:
    raise AssertionError("put() of an ObjectRef must raise TypeError")
print("OK")
