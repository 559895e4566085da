"""Runs what the head assigns to this node, each item in its own process.

Tasks go to worker processes that are reused between tasks with the same GPU set (CUDA_VISIBLE_DEVICES
is fixed when a process starts, so it is part of the worker's identity; a task without GPUs gets
CUDA_VISIBLE_DEVICES="" and cannot touch any). Jobs run as `bash -c` in their own directory and
session; their output goes to a log file on the node that is shipped to the head as it grows.
An actor has a worker process of its own for its life (its GPUs fixed at start); its calls hold no
resources of their own and run in that process one at a time, in the order the head gave them.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import cloudpickle

from core.files import private_dir
from core.machine import pids_with_env
from core.shapes import EPS
from runtime.limits import INLINE_BYTES, MAX_OBJECT_BYTES, too_large
from runtime.node_config import runtime_dir
from runtime.proto import head_pb2 as pb
from runtime.worker import RESULT_DIR_ENV, read_frame, write_frame

log = logging.getLogger("launch.runtime.executor")

MAX_IDLE_WORKERS_PER_KEY = 8
# a task with its inputs at hand and no larger than this goes to an idle worker from the thread that
# takes it in (it fits the pipe: the write never waits); its thread then only waits for the result,
# while the task already runs
SEND_NOW_BYTES = 32 << 10
FINISHED_REMEMBERED = 20000  # finished (id, attempt)s kept to ignore a re-sent assignment of one
LOG_SHIP_INTERVAL_S = 0.2
# a cancelled job's processes get SIGTERM, and SIGKILL this long after (what ignores SIGTERM, or forked)
JOB_STOP_GRACE_S = 3.0
JOB_RUN_ENV = "LAUNCH_JOB_RUN"
ACTOR_CHECK_S = 1.0  # how often an idle actor's process is looked at

Report = Callable[[pb.ItemResult, int], None]  # (result, the attempt it is of)
ShipLog = Callable[[str, bytes], None]


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
    def upload_result(self, item_id: str, source: Path) -> None: ...


class WorkerDied(Exception):
    pass


class Worker:
    def __init__(self, env: dict[str, str]):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runtime.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env=env, cwd=Path.home(),
        )

    def call(self, payload: bytes, deps: dict[str, bytes], item_id: str = "", op: str = "task") -> tuple[str, bytes]:
        self.send(payload, deps, item_id, op)
        return self.receive()

    def send(self, payload: bytes, deps: dict[str, bytes], item_id: str = "", op: str = "task") -> None:
        try:
            write_frame(self.proc.stdin, cloudpickle.dumps((op, payload, deps, item_id)))
        except (BrokenPipeError, OSError, ValueError) as e:
            raise WorkerDied(str(e)) from e

    def receive(self) -> tuple[str, bytes]:
        try:
            frame = read_frame(self.proc.stdout)
        except (OSError, ValueError) as e:
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


class ActorInstance:
    """An actor on this node: its process, and the calls given to it waiting their turn."""

    def __init__(self, a: pb.Assignment):
        self.assignment = a
        self.calls: deque[pb.Assignment] = deque()
        self.current: pb.Assignment | None = None
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


class Executor:
    """Starts assigned items in the order they came, each once the node has room for it: the head may
    hand the node work ahead of time (pipelining), and this is what keeps the node from running more
    than it has. `head` is how payloads and results too large for a message move (Transfers)."""

    def __init__(self, node_id: str, base_env: dict[str, str], report: Report, ship_log: ShipLog,
                 total: dict[str, float] | None = None, head: Transfers | None = None):
        self.node_id = node_id
        self.base_env = base_env
        self.report = report
        self.ship_log = ship_log
        self.total = dict(total or {})
        self.head = head
        self.lock = threading.Lock()
        self.used: dict[str, float] = {}
        self.waiting: deque[pb.Assignment] = deque()
        self.idle: dict[tuple[str, ...], list[Worker]] = {}
        self.running: dict[str, tuple[int, object]] = {}  # item id -> (attempt, Worker | Popen | None: starting)
        self.cancelled: set[str] = set()
        self.dropped: set[tuple[str, int]] = set()  # stopped because the head gave them to others: never reported
        # (id, attempt) of what this node has (waiting or running) and of what it finished lately: a head
        # sends a node's assignments again when its stream re-opens, and those are ignored here
        self.given: set[tuple[str, int]] = set()
        self.requests: dict[str, dict[str, float]] = {}  # what each started item holds
        self.lent: dict[str, float] = {}  # item id -> CPUs it lends while it waits in a `get` (the head says)
        self.finished: OrderedDict[tuple[str, int], None] = OrderedDict()
        self.reporting: set[tuple[str, int]] = set()  # done, its report on the way to the agent
        self.actors: dict[str, ActorInstance] = {}  # actor id -> its instance here
        # an item runs on a thread of its own while it runs (a job, a task waiting on its worker); threads
        # are reused: starting one per item costs more than a trivial task
        self.threads = ThreadPoolExecutor(max_workers=4096, thread_name_prefix="item")

    def _env(self, gpu_ids: list[str], extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(self.base_env)
        env.update(extra or {})
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
        env[RESULT_DIR_ENV] = str(private_dir(results_dir()))
        return env

    # --- assignments --------------------------------------------------------------------------------

    def handle(self, a: pb.Assignment) -> None:
        if a.cancel:
            self.cancel(a.item_id)
            return
        if a.revoke:
            self.revoke(a.item_id)
            return
        if a.lend_cpu or a.take_back_cpu:
            self._lend(a.item_id, a.lend_cpu)
            return
        with self.lock:
            key = (a.item_id, a.attempt)
            if key in self.given or key in self.finished:  # sent again: this node has it, or ran it
                return
            if a.spec.kind == "call":
                inst = self.actors.get(a.spec.actor_id)
                if inst is None:  # its instance here ended: the head puts the call back with the actor
                    return
                self.given.add(key)
                with inst.cond:
                    inst.calls.append(a)
                    inst.cond.notify_all()
                return
            if a.spec.kind == "actor":
                old = self.actors.get(a.item_id)
                if old is not None:  # an older instance the head no longer counts
                    old.kill()
                self.actors[a.item_id] = ActorInstance(a)
            old = self.running.get(a.item_id)
            if old is not None and old[0] != a.attempt:  # the head counts only its newest attempt
                self.dropped.add((a.item_id, old[0]))
                _stop(old[1])
            self.given.add(key)
            self.waiting.append(a)
            self._start_what_fits()

    def _fits(self, request: dict[str, float]) -> bool:
        if not self.total:  # no declared resources (a bare executor): no limit here
            return True
        return all(self.used.get(k, 0.0) + v <= self.total.get(k, 0.0) + EPS for k, v in request.items())

    def _start_what_fits(self) -> None:
        """(under self.lock) In order: the head counts an item as holding resources in the same order."""
        while self.waiting and self._fits(dict(self.waiting[0].spec.request.amounts)):
            a = self.waiting.popleft()
            self.requests[a.item_id] = dict(a.spec.request.amounts)
            for k, v in a.spec.request.amounts.items():
                self.used[k] = self.used.get(k, 0.0) + v
            worker = self._send_now(a) if a.spec.kind == "task" else None
            self.running[a.item_id] = (a.attempt, worker)
            if worker is not None:
                self.threads.submit(self._run, a, lambda a, w=worker: self._finish_task(a, w))
            else:
                self.threads.submit(self._run, a)

    def _send_now(self, a: pb.Assignment) -> Worker | None:
        """(under self.lock) The idle worker `a` was sent to at once, if it is small, its inputs are at
        hand and one is idle; None: its thread does it all."""
        if a.spec.payload_size or a.dep_stored:
            return None
        if len(a.spec.payload) + sum(len(v) for v in a.dep_values.values()) > SEND_NOW_BYTES:
            return None
        pool = self.idle.get(tuple(a.gpu_ids), [])
        while pool:
            w = pool.pop()
            try:
                w.send(a.spec.payload, dict(a.dep_values), a.item_id)
                return w
            except WorkerDied:
                w.kill()
        return None

    def _run(self, a: pb.Assignment, run: Callable[[pb.Assignment], None] | None = None) -> None:
        try:
            (run or {"task": self._run_task, "actor": self._run_actor}.get(a.spec.kind, self._run_job))(a)
        except Exception:  # a bug here must not leave the item running forever, holding its resources
            log.exception("running %s failed", a.item_id)
            self._done(a, pb.ItemResult(id=a.item_id, state="lost", message="the node agent failed to run it"))

    def _lend(self, item_id: str, lend: bool) -> None:
        """The head counts a running item's CPUs as free while it waits in a `get` (lend), or as its again
        (take back): the same here, so the work the head places meanwhile starts."""
        with self.lock:
            cpu = self.requests.get(item_id, {}).get("CPU", 0.0)
            if lend and cpu > 0 and item_id not in self.lent:
                self.lent[item_id] = cpu
                self.used["CPU"] = self.used.get("CPU", 0.0) - cpu
                self._start_what_fits()
            elif not lend and item_id in self.lent:
                self.used["CPU"] = self.used.get("CPU", 0.0) + self.lent.pop(item_id)

    def busy(self) -> bool:
        """Work runs or waits here (an actor only while it has calls): more results are on their way."""
        with self.lock:
            if self.waiting or any(i not in self.actors for i in self.running):
                return True
            actors = list(self.actors.values())
        for inst in actors:
            with inst.cond:
                if inst.current is not None or inst.calls:
                    return True
        return False

    def in_flight(self) -> list[tuple[str, int]]:
        """What this node runs or will run, as (id, attempt): after a head restart, the head adopts it."""
        with self.lock:
            calls = []
            for inst in self.actors.values():
                with inst.cond:
                    calls += [c for c in [inst.current, *inst.calls] if c is not None]
            return ([(i, a) for i, (a, _) in self.running.items()] + [(a.item_id, a.attempt) for a in self.waiting]
                    + [(c.item_id, c.attempt) for c in calls] + sorted(self.reporting))

    def _unqueue(self, a: pb.Assignment) -> None:
        """(under self.lock) An assignment not started leaves (an actor's line goes with it)."""
        self.waiting.remove(a)
        self.given.discard((a.item_id, a.attempt))
        if a.spec.kind == "actor" and self.actors.get(a.item_id) is not None and self.actors[a.item_id].assignment is a:
            del self.actors[a.item_id]

    def _take_call(self, item_id: str, attempt: int | None = None) -> pb.Assignment | None:
        """(under self.lock) A call waiting in an actor's line, taken out of it."""
        for inst in self.actors.values():
            with inst.cond:
                call = next((c for c in inst.calls if c.item_id == item_id
                             and (attempt is None or c.attempt == attempt)), None)
                if call is not None:
                    inst.calls.remove(call)
                    self.given.discard((item_id, call.attempt))
                    return call
        return None

    def cancel(self, item_id: str) -> None:
        with self.lock:
            call = self._take_call(item_id)
            if call is not None:
                self.reporting.add((item_id, call.attempt))
        if call is not None:  # a call that has not started; one that has runs to its end
            self._hand_over(pb.ItemResult(id=item_id, state="cancelled", message="cancelled"), call.attempt)
            return
        with self.lock:
            self.cancelled.add(item_id)
            queued = next((a for a in self.waiting if a.item_id == item_id), None)
            if queued is not None:
                self._unqueue(queued)
                self.cancelled.discard(item_id)
                self.reporting.add((item_id, queued.attempt))
            handle = self.running.get(item_id, (0, None))[1]
        if queued is not None:
            self._hand_over(pb.ItemResult(id=item_id, state="cancelled", message="cancelled"), queued.attempt)
        else:
            _stop(handle)

    def revoke(self, item_id: str) -> None:
        """Give back an item not started yet; one that started runs on and reports as usual."""
        with self.lock:
            queued = next((a for a in self.waiting if a.item_id == item_id), None)
            if queued is not None:
                self._unqueue(queued)  # it may come back, the same attempt
                self.reporting.add((item_id, queued.attempt))
        if queued is not None:
            self._hand_over(pb.ItemResult(id=item_id, state="revoked"), queued.attempt)

    def drop(self, pairs: list[tuple[str, int]]) -> int:
        """Stop these (id, attempt) and report none of them: the head no longer counts them as ours."""
        handles = []
        with self.lock:
            for item_id, attempt in pairs:
                if self._take_call(item_id, attempt) is not None:
                    continue
                queued = next((a for a in self.waiting if a.item_id == item_id and a.attempt == attempt), None)
                if queued is not None:
                    self._unqueue(queued)
                elif self.running.get(item_id, (None,))[0] == attempt:
                    self.dropped.add((item_id, attempt))
                    handles.append(self.running[item_id][1])
        for h in handles:
            _stop(h)
        return len(pairs)

    def _started(self, a: pb.Assignment, handle) -> bool:
        """Record the process running `a`; False if it was stopped meanwhile (then it is killed)."""
        with self.lock:
            if self.running.get(a.item_id, (None,))[0] == a.attempt:
                self.running[a.item_id] = (a.attempt, handle)
            stop = a.item_id in self.cancelled or (a.item_id, a.attempt) in self.dropped
        if stop:
            _stop(handle)
        return not stop

    def _retire(self, key: tuple[str, int]) -> bool:
        """(under self.lock) (id, attempt) is over here: remembered as finished (a re-sent assignment of
        it is ignored) and, unless the head gave it to others, marked `reporting` until _hand_over.
        Returns whether to report it."""
        self.given.discard(key)
        self.finished[key] = None
        if len(self.finished) > FINISHED_REMEMBERED:
            self.finished.popitem(last=False)
        if key in self.dropped:
            self.dropped.discard(key)
            return False
        self.reporting.add(key)
        return True

    def _done(self, a: pb.Assignment, result: pb.ItemResult) -> None:
        with self.lock:
            self.requests.pop(a.item_id, None)
            if a.item_id in self.lent:  # its `get` had not returned: it holds only what it did not lend
                self.used["CPU"] = self.used.get("CPU", 0.0) + self.lent.pop(a.item_id)
            for k, v in a.spec.request.amounts.items():
                self.used[k] = self.used.get(k, 0.0) - v
            if self.running.get(a.item_id, (None,))[0] == a.attempt:
                del self.running[a.item_id]
            self._start_what_fits()
            if not self._retire((a.item_id, a.attempt)):  # in the same hold of the lock as the above
                return
            if a.item_id in self.cancelled:
                self.cancelled.discard(a.item_id)
                result = pb.ItemResult(id=a.item_id, state="cancelled", message="cancelled",
                                       exit_code=result.exit_code)
        self._hand_over(result, a.attempt)

    def _hand_over(self, result: pb.ItemResult, attempt: int) -> None:
        """Report a result marked `reporting` (under the lock that took it out of what runs here): until
        the agent has it, the item still counts as in flight, so a registration made meanwhile (after a
        head restart) lists it and the head does not requeue it."""
        key = (result.id, attempt)
        try:
            self.report(result, attempt)
        finally:
            with self.lock:
                self.reporting.discard(key)

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

    def _inputs(self, a: pb.Assignment) -> tuple[bytes, dict[str, bytes]]:
        """The payload and dependency values, fetched from the head where they were too large to come
        with the assignment."""
        payload = self.head.fetch_args(a.item_id) if a.spec.payload_size else a.spec.payload
        deps = dict(a.dep_values)
        for d in a.dep_stored:
            deps[d] = self.head.fetch_result(d)
        return payload, deps

    def _run_task(self, a: pb.Assignment) -> None:
        try:
            payload, deps = self._inputs(a)
        except Exception as e:  # noqa: BLE001 - the head away or the data gone: retried as a lost item
            self._done(a, pb.ItemResult(id=a.item_id, state="lost", message=f"its inputs could not be fetched ({e})"))
            return
        key = tuple(a.gpu_ids)
        worker = self._acquire(key)
        if not self._started(a, worker):
            self._done(a, pb.ItemResult(id=a.item_id, state="cancelled", message="cancelled"))
            return
        try:
            worker.send(payload, deps, a.item_id)
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
        self._release(tuple(a.gpu_ids), worker)
        self._done(a, self._result(a, status, data))

    def _worker_died(self, a: pb.Assignment, worker: Worker, e: WorkerDied) -> None:
        worker.kill()  # the head retries it (max_retries) or fails it, as for a dead node
        self._done(a, pb.ItemResult(id=a.item_id, state="lost", message=f"its worker process died ({e})"))

    def _result(self, a: pb.Assignment, status: str, data: bytes | str) -> pb.ItemResult:
        if status == "ok-file":  # a large value, in a file the worker wrote as it pickled it
            path = Path(data)
            try:
                return self._stored_result(a, path)
            finally:
                path.unlink(missing_ok=True)
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
            self.head.upload_result(a.item_id, path)
        except Exception as e:  # noqa: BLE001 - the head refused it (not ours any more) or is away for good
            return pb.ItemResult(id=a.item_id, state="lost", message=f"its result could not be stored ({e})")
        return pb.ItemResult(id=a.item_id, state="finished", value_size=size, stored=True)

    # --- actors -------------------------------------------------------------------------------------

    def _run_actor(self, a: pb.Assignment) -> None:
        """Start the actor's process and construct it, then run its calls one at a time until it is
        killed or its process dies (then the head restarts it, or not, and puts its calls back)."""
        inst = self.actors.get(a.item_id)
        if inst is None or inst.assignment is not a:
            self._done(a, pb.ItemResult(id=a.item_id, state="lost", message="replaced by a newer instance"))
            return
        try:
            payload, deps = self._inputs(a)
        except Exception as e:  # noqa: BLE001 - the head away or the data gone
            self._end_actor(a, pb.ItemResult(id=a.item_id, state="lost", message=f"its inputs could not be fetched ({e})"))
            return
        worker = Worker(self._env(list(a.gpu_ids), {"LAUNCH_ACTOR_ID": a.item_id}))
        with inst.cond:
            inst.worker = worker
            stopped = inst.stopped
        if stopped or not self._started(a, inst):
            worker.kill()
            self._end_actor(a, pb.ItemResult(id=a.item_id, state="cancelled", message="cancelled"))
            return
        try:
            status, data = worker.call(payload, deps, a.item_id, op="actor")
        except WorkerDied as e:
            self._end_actor(a, pb.ItemResult(id=a.item_id, state="lost", message=f"its process died ({e})"))
            return
        if status != "ok":  # the constructor raised: the actor is dead, its calls fail with this
            worker.kill()
            self._end_actor(a, self._result(a, status, data))
            return
        while True:
            with inst.cond:
                while not inst.calls and not inst.stopped and worker.alive():
                    inst.cond.wait(ACTOR_CHECK_S)
                if inst.stopped:
                    break
                call = inst.current = inst.calls.popleft() if inst.calls else None
            if call is None:  # its process died while idle (OOM, killed): restarted now, not at its next call
                self._end_actor(a, pb.ItemResult(id=a.item_id, state="lost",
                                                 message=f"its process died (exit code {worker.proc.poll()})"))
                return
            try:
                payload, deps = self._inputs(call)
            except Exception as e:  # noqa: BLE001
                self._call_done(inst, call, pb.ItemResult(id=call.item_id, state="lost",
                                                          message=f"its inputs could not be fetched ({e})"))
                continue
            try:
                status, data = worker.call(payload, deps, a.item_id, op="call")
            except WorkerDied as e:
                with inst.cond:
                    inst.current = None
                    stopped = inst.stopped
                self._end_actor(a, pb.ItemResult(id=a.item_id, state="cancelled" if stopped else "lost",
                                                 message=f"its process died ({e})"))
                return
            self._call_done(inst, call, self._result(call, status, data))
        worker.kill()
        self._end_actor(a, pb.ItemResult(id=a.item_id, state="cancelled", message="killed"))

    def _call_done(self, inst: ActorInstance, call: pb.Assignment, result: pb.ItemResult) -> None:
        with self.lock:
            with inst.cond:
                inst.current = None
            if not self._retire((call.item_id, call.attempt)):
                return
        self._hand_over(result, call.attempt)

    def _end_actor(self, a: pb.Assignment, result: pb.ItemResult) -> None:
        """The instance is over: its calls not run are not reported (the head puts them back in line with
        the actor, or fails them), and it gives back what it held."""
        with self.lock:
            inst = self.actors.get(a.item_id)
            if inst is not None and inst.assignment is a:
                del self.actors[a.item_id]
                with inst.cond:
                    inst.stopped = True
                    for c in inst.calls:
                        self.given.discard((c.item_id, c.attempt))
                    inst.calls.clear()
        self._done(a, result)

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
        env["LAUNCH_JOB_ID"] = env["LAUNCH_ITEM_ID"] = a.item_id
        # what marks this run's whole tree (unique: another cluster on this machine may have a job of this id)
        env[JOB_RUN_ENV] = f"{a.item_id}.{a.attempt}.{secrets.token_hex(6)}"
        env["LAUNCH_JOB_DIR"] = str(job_dir)
        if not cwd.is_dir():
            self._done(a, pb.ItemResult(id=a.item_id, state="failed", exit_code=127,
                                        message=f"working directory {cwd} does not exist on the node"))
            return
        with os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
            try:
                proc = JobProcess(env[JOB_RUN_ENV], ["bash", "-c", spec.command], cwd=cwd, env=env,
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
            except OSError as e:
                self._done(a, pb.ItemResult(id=a.item_id, state="failed", exit_code=127,
                                            message=f"cannot start the job: {e}"))
                return
        self._started(a, proc)
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
        self._done(a, pb.ItemResult(id=a.item_id, state=state, exit_code=code,
                                    message="" if code == 0 else f"exit code {code}"))

    def shutdown(self) -> None:
        with self.lock:
            handles = [h for _, h in self.running.values()]
            workers = [w for pool in self.idle.values() for w in pool]
            actors = list(self.actors.values())
            self.idle.clear()
            self.waiting.clear()
        for inst in actors:
            inst.kill()
        for h in handles:
            _stop(h)
        for w in workers:
            w.kill()
        self.threads.shutdown(wait=False, cancel_futures=True)


def _stop(handle) -> None:
    if isinstance(handle, (Worker, ActorInstance)):
        handle.kill()
    elif isinstance(handle, JobProcess):
        _kill_job(handle)


class JobProcess(subprocess.Popen):
    """A job's main process (`bash -c`), which knows the mark of its run: every process of the job's
    tree is started with JOB_RUN_ENV=mark, so the tree is found whole."""

    def __init__(self, run_mark: str, *args, **kwargs):
        self.run_mark = run_mark
        super().__init__(*args, **kwargs)


def _kill_job(proc: JobProcess, grace_s: float = JOB_STOP_GRACE_S) -> None:
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
