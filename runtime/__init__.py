"""The launch runtime: what runs on the nodes (head service, node agent) and the client API.

    import runtime
    runtime.init()
    @runtime.remote(num_cpus=1)
    def f(x): return x + 1
    runtime.get(f.remote(1))

The API is imported on first use, so node-side commands (`python -m runtime.node ...`) start fast.
"""

__all__ = ["GetTimeoutError", "ObjectRef", "TaskCancelledError", "TaskError", "cancel", "get", "init",
           "remote", "shutdown", "wait"]


def __getattr__(name):
    if name in __all__:
        from runtime import api

        return getattr(api, name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
