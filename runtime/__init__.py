"""The launch runtime: what runs on the nodes (head service, node agent) and the client API.

    import runtime
    runtime.init()
    @runtime.remote(num_cpus=1)
    def f(x): return x + 1
    runtime.get(f.remote(1))
"""

from runtime.api import (
    GetTimeoutError,
    ObjectRef,
    TaskCancelledError,
    TaskError,
    cancel,
    get,
    init,
    remote,
    shutdown,
    wait,
)

__all__ = ["GetTimeoutError", "ObjectRef", "TaskCancelledError", "TaskError", "cancel", "get", "init",
           "remote", "shutdown", "wait"]
