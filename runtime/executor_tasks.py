"""Tasks, as a node's executor (runtime/executor.py) runs them."""

from __future__ import annotations

from pathlib import Path

import cloudpickle
import grpc

from core.files import private_dir
from runtime.limits import INLINE_BYTES, MAX_OBJECT_BYTES, too_large
from runtime.node_config import runtime_dir
from runtime.processes import Worker, WorkerDied
from runtime.proto import head_pb2 as pb
from runtime.runtime_env import Prepared, RuntimeEnvSetupFailed, prepare
from runtime.work import DIRECT_ATTEMPT

MAX_IDLE_WORKERS_PER_KEY = 8


def task_context(a: pb.Assignment) -> dict:
    """What a task may ask of get_runtime_context() beyond its id: the resources it was given, its group."""
    return {"resources": dict(a.spec.request.amounts), "placement_group": a.spec.pg_id}


class InputLost(Exception):
    """A value a task is given that the head no longer has (its id is the message)."""


class TaskRunning:
    """The executor's tasks: each in a pooled worker process of its GPU set (and runtime_env); its result inline,
    or uploaded from the worker's file. Its state is the Executor's (set in Executor.__init__): a part of
    Executor, not used alone."""

    def _runtime_env(self, a: pb.Assignment) -> Prepared | None:
        """The work's runtime_env made ready on this node (RuntimeEnvSetupFailed: it cannot be); None: it has none."""
        if not a.spec.runtime_env:
            return None
        return prepare(a.spec.runtime_env, self.head.fetch_result, private_dir(runtime_dir() / "runtime_envs"))

    def _acquire(self, gpu_ids: list[str], env: Prepared | None = None) -> Worker:
        """An idle worker of these GPUs (and runtime_env), or a new one."""
        key = (*gpu_ids, *((f"env:{env.key}",) if env else ()))
        with self.lock:
            pool = self.idle.get(key, [])
            while pool:
                w = pool.pop()
                if w.alive():
                    return w
        w = Worker(self._env(gpu_ids, env.env if env else None), cwd=env.cwd if env else None)
        w.key = key
        return w

    def _release(self, w: Worker) -> None:
        """Back to its idle pool (its GPUs, its runtime_env)."""
        with self.lock:
            pool = self.idle.setdefault(w.key, [])
            if w.alive() and len(pool) < MAX_IDLE_WORKERS_PER_KEY:
                pool.append(w)
                return
        w.kill()

    def _inputs(self, a: pb.Assignment) -> tuple[bytes, dict[str, bytes]]:
        """The payload and dependency values, fetched from the head where they were too large to come
        with the assignment."""
        payload = self.head.fetch_args(a.item_id) if a.spec.payload_size else a.spec.payload
        deps = dict(a.dep_values)
        for d in a.dep_stored:
            try:
                deps[d] = self.head.fetch_result(d)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    raise InputLost(d) from None
                raise
        return payload, deps

    @staticmethod
    def _inputs_failed(a: pb.Assignment, e: Exception) -> pb.ItemResult:
        """A value it is given that the head no longer has fails it (it would not be there at a retry);
        anything else (the head away) makes it lost: run again."""
        if isinstance(e, InputLost):
            return pb.ItemResult(id=a.item_id, state="failed", message=f"its input {e} was lost: the head no "
                                                                        "longer has its value (its machine restarted?)")
        why = e.code().name if isinstance(e, grpc.RpcError) else str(e)
        return pb.ItemResult(id=a.item_id, state="lost", message=f"its inputs could not be fetched ({why})")

    def _run_task(self, a: pb.Assignment) -> None:
        try:
            payload, deps = self._inputs(a)
        except Exception as e:  # noqa: BLE001 - the head away or the data gone
            self._done(a, self._inputs_failed(a, e))
            return
        try:
            env = self._runtime_env(a)
        except RuntimeEnvSetupFailed as e:  # the task's error (not retried: it would fail again)
            self._done(a, pb.ItemResult(id=a.item_id, state="failed", message=str(e)))
            return
        worker = self._acquire(list(a.gpu_ids), env)
        if not self._started(a, worker):
            self._done(a, pb.ItemResult(id=a.item_id, state="cancelled", message="cancelled"))
            return
        try:
            worker.send(payload, deps, a.item_id, context=task_context(a))
        except WorkerDied as e:
            self._worker_died(a, worker, e)
            return
        self._finish_task(a, worker)

    def _finish_task(self, a: pb.Assignment, worker: Worker) -> None:
        """`a` was sent to `worker`: its result, then the worker is free again."""
        try:
            status, data = worker.receive()
        except WorkerDied as e:
            self._worker_died(a, worker, e)
            return
        self._release(worker)
        self._done(a, self._result(a, status, data))

    def _worker_died(self, a: pb.Assignment, worker: Worker, e: WorkerDied) -> None:
        code = worker.exit_code()
        worker.kill()  # the head retries it (max_retries) or fails it, as for a dead node
        self._done(a, pb.ItemResult(id=a.item_id, state="lost", exit_code=code,
                                    message=f"its worker process died ({e})"))

    def _result(self, a: pb.Assignment, status: str, data: bytes | str) -> pb.ItemResult:
        if status == "ok-file":  # a large value, in a file the worker wrote as it pickled it
            path = Path(data)
            try:
                return self._stored_result(a, path)
            finally:
                path.unlink(missing_ok=True)
        if status == "cancelled":  # (a call sent ahead to its actor, cancelled before it started)
            return pb.ItemResult(id=a.item_id, state="cancelled", message="cancelled")
        if status != "ok":
            exc, _tb = cloudpickle.loads(data)
            message = f"{type(exc).__name__}: {exc}"[:300]
            if len(data) > INLINE_BYTES:  # an error carries its message and traceback, not megabytes
                data = cloudpickle.dumps((RuntimeError(message), _tb[-20000:]))
            return pb.ItemResult(id=a.item_id, state="failed", error=data, message=message)
        return pb.ItemResult(id=a.item_id, state="finished", value=data)

    def _stored_result(self, a: pb.Assignment, path: Path) -> pb.ItemResult:
        """Uploaded from the worker's file to the head in chunks (never read whole into memory)."""
        try:
            size = path.stat().st_size
        except OSError as e:
            return pb.ItemResult(id=a.item_id, state="lost", message=f"its result could not be read ({e.strerror})")
        if size > MAX_OBJECT_BYTES:  # fail it clearly rather than let it hang
            return pb.ItemResult(id=a.item_id, state="failed", message=too_large("result", size))
        try:
            self.head.upload_result(a.item_id, path, direct=a.attempt == DIRECT_ATTEMPT)
        except Exception as e:  # noqa: BLE001 - the head refused it (not ours any more) or is away for good
            return pb.ItemResult(id=a.item_id, state="lost", message=f"its result could not be stored ({e})")
        return pb.ItemResult(id=a.item_id, state="finished", value_size=size, stored=True)
