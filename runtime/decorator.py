"""`@runtime.remote`: a function becomes a task (runtime/api.py), a class an actor (runtime/actors.py)."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from runtime.actors import ActorClass, method  # noqa: F401 (the API's)
from runtime.api import DEFAULT_MAX_RETRIES, PLACEMENT_OPTIONS, RemoteFunction


def remote(fn: Callable | None = None, *, num_cpus: float | None = None, num_gpus: float = 0, memory: float = 0,
           resources: dict[str, float] | None = None, max_retries: int = DEFAULT_MAX_RETRIES, **options):
    """Decorator: `@remote` or `@remote(num_cpus=2, num_gpus=0.5, resources={"accelerator_type:T4": 1})` on
    a function (a task: 1 CPU unless told) or on a class (an actor: holds what it asks for while it lives,
    nothing unless told; options max_restarts, max_task_retries, name, lifetime)."""
    def wrap(f):
        if inspect.isclass(f):
            return ActorClass(f, num_cpus=num_cpus or 0, num_gpus=num_gpus, memory=memory, resources=resources,
                              **options)
        unknown = set(options) - set(PLACEMENT_OPTIONS) - {"num_returns", "retry_exceptions", "runtime_env"}
        if unknown:
            raise TypeError(f"unknown option(s) for a remote function: {', '.join(sorted(unknown))}")
        return RemoteFunction(f, 1 if num_cpus is None else num_cpus, num_gpus, memory, resources, max_retries,
                              **options)

    return wrap(fn) if fn is not None else wrap
