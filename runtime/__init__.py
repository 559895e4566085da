"""The launch runtime: what runs on the nodes (head service, node agent) and the client API.

    import runtime
    runtime.init()
    @runtime.remote(num_cpus=1)
    def f(x): return x + 1
    runtime.get(f.remote(1))

The API is imported on first use, so node-side commands (`python -m runtime.node ...`) start fast.
"""

import os as _os
import sys as _sys
from importlib.util import find_spec as _find_spec
from pathlib import Path as _Path

# gRPC's newer I/O (its EventEngine, the default since 1.6x) reads each message on a poller thread of its
# own and hands it to the Python thread waiting for it; its older I/O path has the waiting thread read the
# socket itself. Measured on a task's round trip (four messages: client -> head -> agent -> head ->
# client): 50-60 us less per message, about a tenth of the round trip. gRPC reads this setting once, when
# it is first imported, so it is made here, before any module of the runtime imports gRPC; a value of
# your own is kept. Only for the versions it was measured on: one that no longer knows these names would
# print an error line in every process.
_IO_EXPERIMENTS = "-event_engine_client,-event_engine_listener"
_MEASURED_ON = ("1.85.",)


def _grpc_version() -> str:
    """grpcio's version, read without importing it (importing it is what must come after)."""
    try:
        spec = _find_spec("grpc")
        text = (_Path(spec.origin).parent / "_grpcio_metadata.py").read_text()
    except (ImportError, AttributeError, TypeError, OSError):
        return ""
    return text.split('"""')[1] if text.count('"""') >= 2 else ""


def _set_up_grpc_io() -> None:
    # The runtime's processes fork only to exec (workers, jobs): gRPC's fork handlers have nothing to
    # keep, and where they run while other threads are in gRPC (grpcio 1.80, Python 3.9 nodes) they broke
    # the parent's poller: "epoll_wait error: Bad file descriptor", then an abort, or a task never heard
    # of again.
    _os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
    if "GRPC_EXPERIMENTS" in _os.environ or "grpc" in _sys.modules or not _grpc_version().startswith(_MEASURED_ON):
        return
    _os.environ["GRPC_EXPERIMENTS"] = _IO_EXPERIMENTS
    # On that path a channel that lost its server reconnects only while some thread polls it; with no
    # call waiting, that is gRPC's backup poller, every 5 s by default: agents came back 5-7 s after a
    # head restart (1-2 s before). Every 0.2 s, with the reconnect backoff of runtime/client.py: 1-2 s.
    _os.environ.setdefault("GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS", "200")


def _own_site_first() -> None:
    """A bare `python3` finds the runtime through the user-site finder of lifecycle/runtime_bundle.py, after
    every other place: put the runtime's own site first before its dependencies are imported, or the
    image's own protobuf or grpc (Debian's python3-protobuf) would be found before the ones it ships."""
    site = str(_Path(__file__).resolve().parent.parent)
    if _Path(site).name == "site" and site not in _sys.path:
        _sys.path.insert(0, site)


_own_site_first()
_set_up_grpc_io()

_API = {
    "runtime.api": ["ObjectRef", "ObjectRefGenerator", "cancel", "get", "init", "put", "shutdown", "wait"],
    "runtime.exceptions": ["ActorDiedError", "GetTimeoutError", "TaskCancelledError", "TaskError"],
    "runtime.decorator": ["method", "remote"],
    "runtime.introspection": ["available_resources", "cluster_resources", "get_gpu_ids", "get_runtime_context",
                              "is_initialized", "nodes"],
    "runtime.actors": ["ActorHandle", "get_actor", "kill"],
    "runtime.preemption": ["on_preemption"],
    "runtime.placement_group": ["PlacementGroup", "PlacementGroupSchedulingStrategy", "get_current_placement_group",
                                "placement_group", "remove_placement_group"],
}
__all__ = sorted(name for names in _API.values() for name in names)


_SUBMODULES = ("exceptions", "util")  # `import runtime as ray; ray.exceptions.GetTimeoutError`, as in Ray


def __getattr__(name):
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"runtime.{name}")
    for module, names in _API.items():
        if name in names:
            import importlib

            value = globals()[name] = getattr(importlib.import_module(module), name)  # looked up once
            return value
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
