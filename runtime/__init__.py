"""The launch runtime: what runs on the nodes (head service, node agent) and the client API.

    import runtime
    runtime.init()
    @runtime.remote(num_cpus=1)
    def f(x): return x + 1
    runtime.get(f.remote(1))

The API is imported on first use, so node-side commands (`python -m runtime.node ...`) start fast.
"""

_API = {
    "runtime.api": ["GetTimeoutError", "ObjectRef", "TaskCancelledError", "TaskError", "cancel", "get", "init",
                    "remote", "shutdown", "wait"],
    "runtime.actors": ["ActorDiedError", "ActorHandle", "get_actor", "kill"],
    "runtime.placement_group": ["PlacementGroup", "PlacementGroupSchedulingStrategy", "placement_group",
                                "remove_placement_group"],
}
__all__ = sorted(name for names in _API.values() for name in names)


def __getattr__(name):
    for module, names in _API.items():
        if name in names:
            import importlib

            value = globals()[name] = getattr(importlib.import_module(module), name)  # looked up once
            return value
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
