"""The errors a program using the runtime meets, with Ray's names and hierarchy (`ray.exceptions`), in a
module of their own so that every part of the client API raises the same classes.

    RayError
    ├── RayTaskError (TaskError)      the task raised; also an instance of its exception's type
    ├── TaskCancelledError            cancel()ed
    ├── RayActorError
    │   └── ActorDiedError            the actor was killed, died out of restarts, or its __init__ raised
    ├── GetTimeoutError (+ TimeoutError)
    ├── ObjectLostError               a value the cluster no longer has (expired, or lost on the head)
    ├── WorkerCrashedError            the process running it died
    │   └── OutOfMemoryError          ... killed for memory
    ├── NodeDiedError                 its node died, and no retries were left
    ├── TaskUnschedulableError        no node type of the cluster can run it
    └── RuntimeEnvSetupError          its runtime_env could not be made on the node
"""

from __future__ import annotations


class RayError(Exception):
    """Every error of the runtime."""


class RayTaskError(RayError):
    """A task or actor method raised. Raised by get() as an instance of the remote exception's type too
    (`except ZeroDivisionError` works); `cause` is that exception, `remote_traceback` its traceback."""

    def __init__(self, message: str, cause: BaseException | None = None, remote_traceback: str = ""):
        super().__init__(message)
        self.cause = cause
        self.remote_traceback = remote_traceback

    def as_instanceof_cause(self) -> RayTaskError:
        return self  # (get() raises it so already)


TaskError = RayTaskError  # the name launch used first


class TaskCancelledError(RayError):
    pass


class RayActorError(RayError):
    pass


class ActorDiedError(RayActorError):
    """A call could not run: its actor was killed, died out of restarts, or its constructor raised."""


class ActorUnavailableError(RayError):
    """(Ray's: a call met its actor restarting.) Here a call waits for the actor to be back instead."""


class GetTimeoutError(RayError, TimeoutError):
    pass


class ObjectLostError(RayError):
    pass


class WorkerCrashedError(RayError):
    pass


class OutOfMemoryError(WorkerCrashedError):
    pass


class NodeDiedError(RayError):
    pass


class TaskUnschedulableError(RayError):
    pass


class RuntimeEnvSetupError(RayError):
    """Its runtime_env could not be made on the node (a pip install failed, an archive was lost)."""


# What the head says of an item it could not finish, by the start of its message: the class get() raises.
_BY_MESSAGE = (
    ("its actor ", ActorDiedError),
    ("its worker process died", WorkerCrashedError),
    ("its process died", WorkerCrashedError),
    ("its node", NodeDiedError),
    ("its result was lost", ObjectLostError),
    ("its input ", ObjectLostError),
    ("its result could not be read", ObjectLostError),
    ("runtime_env", RuntimeEnvSetupError),
    ("no node ", TaskUnschedulableError),
)


def error_for(item_id: str, state: str, message: str) -> RayError:
    """The error get() raises for an item that failed without an exception of its own."""
    if state == "cancelled":
        return TaskCancelledError(f"task {item_id} was cancelled")
    if state == "infeasible":
        return TaskUnschedulableError(f"task {item_id} {state}: {message}")
    if "out of memory" in message:
        return OutOfMemoryError(f"task {item_id} {state}: {message}")
    # anything else (a job's exit code, work too large for its bundle): the task's own failure
    cls = next((c for prefix, c in _BY_MESSAGE if message.startswith(prefix)), RayTaskError)
    return cls(f"task {item_id} {state}: {message}")
