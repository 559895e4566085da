"""The processes a node agent runs work in, as the executor (runtime/executor.py) handles them: task
workers (runtime/worker.py, reused), an actor's own worker, a job's `bash -c` and its whole tree, and
where values too large for a message wait to be uploaded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Protocol

import cloudpickle

from core.machine import pids_with_env
from runtime.node_config import runtime_dir
from runtime.proto import head_pb2 as pb
from runtime.worker import CANCEL_FD_ENV, read_frame, write_frame

# a cancelled job's processes get SIGTERM, and SIGKILL this long after (what ignores SIGTERM, or forked)
JOB_STOP_GRACE_S = 3.0
JOB_RUN_ENV = "LAUNCH_JOB_RUN"
# how long a process whose pipe broke gets to end by itself, so that its own exit code is what is reported
WORKER_EXIT_WAIT_S = 1.0


def died_of_signal(exit_code: int) -> bool:
    """The exit code of a process that a signal ended: negative (Popen's way), or bash's 128+N."""
    return exit_code < 0 or 128 < exit_code <= 128 + 64


def results_dir() -> Path:
    """Where workers write values too large for a message, for the agent to upload (then removed)."""
    return runtime_dir() / "results"


def discard_results() -> int:
    """(an agent starting, before it runs anything) Values an earlier agent of this node left behind when
    it died: their items run again. Returns how many."""
    left = list(results_dir().glob("*")) if results_dir().is_dir() else []
    for path in left:
        path.unlink(missing_ok=True)
    return len(left)


class Transfers(Protocol):
    """Moves what is too large for a message between this node and the head (the agent's client)."""

    def fetch_args(self, item_id: str) -> bytes: ...
    def fetch_result(self, item_id: str) -> bytes: ...
    def upload_result(self, item_id: str, source: Path, direct: bool = False) -> None: ...


class WorkerDied(Exception):
    pass


class Worker:
    def __init__(self, env: dict[str, str], cwd: str | None = None, actor: bool = False):
        """actor: the process of an actor, given a pipe for cancels of the calls sent ahead to it."""
        self.key: tuple[str, ...] = ()  # the idle pool it goes back to (its GPUs, its runtime_env)
        self.sent_context: dict = {}
        self.write_lock = threading.Lock()  # (an actor's calls are written by its line's thread and its agent's)
        self.closed = False  # its pipe to us ended: it exited, or is exiting
        self.cancel_lock = threading.Lock()
        cancels = os.pipe() if actor else None  # (an in-turn actor's cancels: runtime/worker.py)
        self.cancels = os.fdopen(cancels[1], "wb") if cancels else None  # (closed with this, or when killed)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "runtime.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                env={**env, CANCEL_FD_ENV: str(cancels[0])} if cancels else env, cwd=cwd or Path.home(),
                pass_fds=cancels[:1] if cancels else (),
            )
        except BaseException:
            if self.cancels is not None:
                self.cancels.close()
            raise
        finally:
            if cancels:
                os.close(cancels[0])

    def call(self, payload: bytes, deps: dict[str, bytes], item_id: str = "", op: str = "task",
             context: dict | None = None) -> tuple[str, bytes]:
        self.send(payload, deps, item_id, op, context)
        return self.receive()

    def send(self, payload: bytes, deps: dict[str, bytes], item_id: str = "", op: str = "task",
             context: dict | None = None) -> None:
        """context: what the work may ask of get_runtime_context() (resources, placement group; a call's
        task_id); not sent again when it is what this process was last given (most tasks repeat it)."""
        context = context or {}
        try:
            with self.write_lock:
                if context and context == self.sent_context:
                    context = {"same": True}
                else:
                    self.sent_context = context
                write_frame(self.proc.stdin, cloudpickle.dumps((op, payload, deps, item_id, context)))
        except (BrokenPipeError, OSError, ValueError) as e:
            raise WorkerDied(str(e)) from e

    def cancel(self, call_id: str) -> None:
        """(an in-turn actor's) A call sent ahead is not to run if it has not started: then it is answered as
        cancelled at once (runtime/worker.py); one that started runs to its end."""
        try:
            with self.cancel_lock:
                if self.cancels is not None:
                    write_frame(self.cancels, call_id.encode())
        except (OSError, ValueError):
            pass  # (its process is gone: its end says what became of the call)

    def receive(self) -> tuple[str, bytes]:
        try:
            frame = read_frame(self.proc.stdout)
        except (OSError, ValueError) as e:
            raise WorkerDied(str(e)) from e
        if frame is None:
            self.closed = True
            raise WorkerDied(f"worker exited with {self.proc.wait()}")
        return cloudpickle.loads(frame)

    def alive(self) -> bool:
        return not self.closed and self.proc.poll() is None

    def exit_code(self, wait_s: float = WORKER_EXIT_WAIT_S) -> int:
        """(its pipe broke) The code it ended with; 0 when it is still running after wait_s (it did not die)."""
        try:
            return self.proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            return 0

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait()
        with self.cancel_lock:
            if self.cancels is not None:
                self.cancels.close()


class ActorInstance:
    """An actor on this node: its process, and the calls given to it waiting their turn."""

    def __init__(self, a: pb.Assignment):
        self.assignment = a
        self.calls: deque[pb.Assignment] = deque()
        self.running: dict[str, pb.Assignment] = {}  # calls its process has now, in the order they were sent
        self.answered: set[str] = set()  # of those, the ones whose reply came (being handed over)
        self.in_turn = False  # its process runs them one at a time, in that order (several sent ahead)
        self.cond = threading.Condition()
        self.worker: Worker | None = None
        self.stopped = False

    def kill(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()
            worker = self.worker
        if worker is not None:
            worker.kill()


def stop_process(handle) -> None:
    if isinstance(handle, (Worker, ActorInstance)):
        handle.kill()
    elif isinstance(handle, JobProcess):
        kill_job(handle)


class JobProcess(subprocess.Popen):
    """A job's main process (`bash -c`), which knows the mark of its run: every process of the job's
    tree is started with JOB_RUN_ENV=mark, so the tree is found whole."""

    def __init__(self, run_mark: str, *args, **kwargs):
        self.run_mark = run_mark
        super().__init__(*args, **kwargs)


def kill_job(proc: JobProcess, grace_s: float = JOB_STOP_GRACE_S) -> None:
    """End a job's whole tree: its process group, and every process started with its run's mark (one
    that left the group with setsid too; not one that cleared its environment). SIGTERM first; what is left after the grace period (one that
    ignores SIGTERM) gets SIGKILL, found again so that what forked meanwhile goes too."""
    def tree() -> set[int]:
        pids = set(pids_with_env(JOB_RUN_ENV, proc.run_mark))
        if proc.poll() is None:
            pids.add(proc.pid)
        return pids

    def signal_all(sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for pid in tree():
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and tree():
        time.sleep(0.05)
    if tree():
        signal_all(signal.SIGKILL)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
