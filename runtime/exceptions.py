"""The errors a program using the runtime meets (`runtime.TaskError`, ...): in a module of their own, so
that every part of the client API raises the same classes without importing the others."""

from __future__ import annotations


class TaskError(Exception):
    """A task failed. Raised by get(); also an instance of the remote exception's type where possible."""

    def __init__(self, message: str, cause: BaseException | None = None, remote_traceback: str = ""):
        super().__init__(message)
        self.cause = cause
        self.remote_traceback = remote_traceback


class GetTimeoutError(TimeoutError):
    pass


class TaskCancelledError(TaskError):
    pass


class ActorDiedError(TaskError):
    """A call could not run: its actor was killed, died out of restarts, or its constructor raised."""
