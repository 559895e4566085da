"""ray.exceptions: the classes and hierarchy Ray's documentation names, raised where Ray raises them."""
import time

import ray
from ray.exceptions import (ActorDiedError, GetTimeoutError, ObjectLostError, OutOfMemoryError, RayActorError,
                            RayError, RayTaskError, TaskCancelledError, WorkerCrashedError, NodeDiedError)

ray.init()

assert issubclass(RayTaskError, RayError) and issubclass(TaskCancelledError, RayError)
assert issubclass(ActorDiedError, RayActorError) and issubclass(RayActorError, RayError)
assert issubclass(GetTimeoutError, RayError) and issubclass(GetTimeoutError, TimeoutError)
for cls in (ObjectLostError, OutOfMemoryError, WorkerCrashedError, NodeDiedError):
    assert issubclass(cls, RayError), cls


class MyError(Exception):
    pass


@ray.remote
def boom():
    raise MyError("boom")


try:
    ray.get(boom.remote())
except MyError as e:  # the user's own type...
    assert isinstance(e, RayTaskError)  # ...and Ray's
    assert "boom" in str(e)
else:
    raise AssertionError("no error")


@ray.remote
def passes_on(x):
    return x


try:  # a task given a failed task's result fails with that task's error
    ray.get(passes_on.remote(boom.remote()))
except MyError:
    pass
else:
    raise AssertionError("no error")


@ray.remote
def slow():
    time.sleep(30)


ref = slow.remote()
try:
    ray.get(ref, timeout=0.5)
except GetTimeoutError:
    pass
else:
    raise AssertionError("no timeout")
ray.cancel(ref, force=True)
try:
    ray.get(ref, timeout=30)
except (TaskCancelledError, WorkerCrashedError):
    pass
else:
    raise AssertionError("not cancelled")


@ray.remote
class Actor:
    def ping(self):
        return "pong"


a = Actor.remote()
assert ray.get(a.ping.remote()) == "pong"
ray.kill(a)
try:
    ray.get(a.ping.remote(), timeout=30)
except RayActorError as e:
    assert isinstance(e, ActorDiedError) or type(e) is RayActorError
else:
    raise AssertionError("a killed actor answered")


@ray.remote
class Broken:
    def __init__(self):
        raise ValueError("cannot start")

    def ping(self):
        return "pong"


b = Broken.remote()
try:
    ray.get(b.ping.remote(), timeout=30)
except RayActorError:
    pass
else:
    raise AssertionError("a broken actor answered")
print("OK")
