"""max_retries with retry_exceptions: application errors retried (all, or the listed types)."""
import os
import tempfile

import ray

ray.init()


@ray.remote(max_retries=3, retry_exceptions=True)
def flaky(path):
    with open(path, "a+") as f:
        f.seek(0)
        tries = len(f.read())
        f.write("x")
    if tries < 2:
        raise ConnectionError("try again")
    return tries


@ray.remote(max_retries=3, retry_exceptions=[ConnectionError])
def only_connection_errors(path):
    with open(path, "a+") as f:
        f.seek(0)
        tries = len(f.read())
        f.write("x")
    raise ValueError(f"attempt {tries}")


@ray.remote
def count(path):
    with open(path) as f:
        return len(f.read())


@ray.remote
def scratch():
    # a file on the node that runs the tasks (each is pinned there by a custom resource)
    fd, path = tempfile.mkstemp()
    os.close(fd)
    return path


opts = {"resources": {"special": 1}}
path = ray.get(scratch.options(**opts).remote())
assert ray.get(flaky.options(**opts).remote(path)) == 2
path = ray.get(scratch.options(**opts).remote())
try:
    ray.get(only_connection_errors.options(**opts).remote(path))
except ValueError as e:
    assert "attempt 0" in str(e)  # not retried: not a listed type
else:
    raise AssertionError("no error")
assert ray.get(count.options(**opts).remote(path)) == 1
print("OK")
