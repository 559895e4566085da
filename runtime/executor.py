"""Runs what the head assigns to this node, each item in its own process.

Tasks go to worker processes that are reused between tasks with the same GPU set (CUDA_VISIBLE_DEVICES
is fixed when a process starts, so it is part of the worker's identity; a task without GPUs gets
CUDA_VISIBLE_DEVICES="" and cannot touch any). Jobs run as `bash -c` in their own directory and
session; their output goes to a log file on the node that is shipped to the head as it grows.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cloudpickle

from runtime.limits import MAX_RESULT_BYTES
from runtime.node_config import runtime_dir
from runtime.proto import head_pb2 as pb
from runtime.worker import read_frame, write_frame

log = logging.getLogger("launch.runtime.executor")

MAX_IDLE_WORKERS_PER_KEY = 8
LOG_SHIP_INTERVAL_S = 0.2

Report = Callable[[pb.ItemResult], None]
ShipLog = Callable[[str, bytes], None]


class WorkerDied(Exception):
    pass


class Worker:
    def __init__(self, env: dict[str, str]):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runtime.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env=env, cwd=Path.home(),
        )

    def call(self, payload: bytes, deps: dict[str, bytes]) -> tuple[str, bytes]:
        try:
            write_frame(self.proc.stdin, cloudpickle.dumps((payload, deps)))
            frame = read_frame(self.proc.stdout)
        except (BrokenPipeError, OSError, ValueError) as e:
            raise WorkerDied(str(e)) from e
        if frame is None:
            raise WorkerDied(f"worker exited with {self.proc.wait()}")
        return cloudpickle.loads(frame)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait()


class Executor:
    def __init__(self, node_id: str, base_env: dict[str, str], report: Report, ship_log: ShipLog):
        self.node_id = node_id
        self.base_env = base_env
        self.report = report
        self.ship_log = ship_log
        self.lock = threading.Lock()
        self.idle: dict[tuple[str, ...], list[Worker]] = {}
        self.running: dict[str, object] = {}  # item id -> Worker | Popen
        self.cancelled: set[str] = set()
        self.dropped: set[str] = set()  # stopped because the head requeued them: never reported

    def _env(self, gpu_ids: list[str], extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(self.base_env)
        env.update(extra or {})
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
        return env

    # --- assignments --------------------------------------------------------------------------------

    def handle(self, a: pb.Assignment) -> None:
        if a.cancel:
            self.cancel(a.item_id)
            return
        target = self._run_task if a.spec.kind == "task" else self._run_job
        threading.Thread(target=target, args=(a,), name=f"item-{a.item_id}", daemon=True).start()

    def cancel(self, item_id: str) -> None:
        with self.lock:
            self.cancelled.add(item_id)
            handle = self.running.get(item_id)
        if isinstance(handle, Worker):
            handle.kill()
        elif isinstance(handle, subprocess.Popen):
            _kill_group(handle)

    def drop_all(self) -> int:
        """Stop everything running and report none of it (the head no longer counts it as ours)."""
        with self.lock:
            items = list(self.running)
            self.dropped.update(items)
        for item_id in items:
            self.cancel(item_id)
        return len(items)

    def _done(self, item_id: str, result: pb.ItemResult) -> None:
        with self.lock:
            self.running.pop(item_id, None)
            if item_id in self.dropped:
                self.dropped.discard(item_id)
                self.cancelled.discard(item_id)
                return
            if item_id in self.cancelled:
                self.cancelled.discard(item_id)
                result = pb.ItemResult(id=item_id, state="cancelled", message="cancelled",
                                       exit_code=result.exit_code)
        self.report(result)

    # --- tasks --------------------------------------------------------------------------------------

    def _acquire(self, key: tuple[str, ...]) -> Worker:
        with self.lock:
            pool = self.idle.get(key, [])
            while pool:
                w = pool.pop()
                if w.alive():
                    return w
        return Worker(self._env(list(key)))

    def _release(self, key: tuple[str, ...], w: Worker) -> None:
        with self.lock:
            pool = self.idle.setdefault(key, [])
            if w.alive() and len(pool) < MAX_IDLE_WORKERS_PER_KEY:
                pool.append(w)
                return
        w.kill()

    def _run_task(self, a: pb.Assignment) -> None:
        key = tuple(a.gpu_ids)
        worker = self._acquire(key)
        with self.lock:
            self.running[a.item_id] = worker
            cancelled_early = a.item_id in self.cancelled
        if cancelled_early:
            worker.kill()
        try:
            status, data = worker.call(a.spec.payload, dict(a.dep_values))
        except WorkerDied as e:
            worker.kill()  # the head retries it (max_retries) or fails it, as for a dead node
            self._done(a.item_id, pb.ItemResult(id=a.item_id, state="lost",
                                                message=f"its worker process died ({e})"))
            return
        self._release(key, worker)
        if len(data) > MAX_RESULT_BYTES:  # fail it clearly rather than let it hang on a message limit
            what = "result" if status == "ok" else "error"
            self._done(a.item_id, pb.ItemResult(id=a.item_id, state="failed", message=(
                f"its {what} is {len(data) / 2**20:.0f} MiB, over the limit of {MAX_RESULT_BYTES >> 20} MiB "
                "per result; return a smaller value, or write it to shared storage and return its path")))
            return
        if status == "ok":
            self._done(a.item_id, pb.ItemResult(id=a.item_id, state="finished", value=data))
        else:
            exc, _tb = cloudpickle.loads(data)
            self._done(a.item_id, pb.ItemResult(id=a.item_id, state="failed", error=data,
                                                message=f"{type(exc).__name__}: {exc}"[:300]))

    # --- jobs ---------------------------------------------------------------------------------------

    def _run_job(self, a: pb.Assignment) -> None:
        spec = a.spec
        job_dir = runtime_dir() / "jobs" / a.item_id
        job_dir.mkdir(parents=True, exist_ok=True)
        for d in (job_dir.parent, job_dir):  # a job's files and output are its user's only
            os.chmod(d, 0o700)
        for name, data in spec.files.items():
            dst = (job_dir / name).resolve()
            if job_dir.resolve() not in dst.parents:
                continue  # a file name may not escape the job's directory
            dst.parent.mkdir(parents=True, exist_ok=True)
            with os.fdopen(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
                f.write(data)
        cwd = Path(os.path.expanduser(spec.working_dir)) if spec.working_dir else job_dir
        if not cwd.is_absolute():
            cwd = job_dir / cwd
        log_path = job_dir / "output.log"
        env = self._env(list(a.gpu_ids), dict(spec.env))
        env["LAUNCH_JOB_ID"] = a.item_id
        env["LAUNCH_JOB_DIR"] = str(job_dir)
        if not cwd.is_dir():
            self._done(a.item_id, pb.ItemResult(id=a.item_id, state="failed", exit_code=127,
                                                message=f"working directory {cwd} does not exist on the node"))
            return
        with os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
            try:
                proc = subprocess.Popen(["bash", "-c", spec.command], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as e:
                self._done(a.item_id, pb.ItemResult(id=a.item_id, state="failed", exit_code=127,
                                                    message=f"cannot start the job: {e}"))
                return
        with self.lock:
            self.running[a.item_id] = proc
            if a.item_id in self.cancelled:
                _kill_group(proc)
        with open(log_path, "rb") as f:
            while True:
                exited = proc.poll() is not None
                chunk = f.read()
                if chunk:
                    self.ship_log(a.item_id, chunk)
                if exited:
                    break
                time.sleep(LOG_SHIP_INTERVAL_S)
        code = proc.returncode
        state = "finished" if code == 0 else "failed"
        self._done(a.item_id, pb.ItemResult(id=a.item_id, state=state, exit_code=code,
                                            message="" if code == 0 else f"exit code {code}"))

    def shutdown(self) -> None:
        with self.lock:
            handles = list(self.running.values())
            workers = [w for pool in self.idle.values() for w in pool]
            self.idle.clear()
        for h in handles:
            if isinstance(h, Worker):
                h.kill()
            else:
                _kill_group(h)
        for w in workers:
            w.kill()


def _kill_group(proc: subprocess.Popen, grace_s: float = 3.0) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
