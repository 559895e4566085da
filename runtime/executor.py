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
import signal
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from core.files import private_dir
from core.shapes import EPS
from runtime.executor_actors import ActorRunning
from runtime.executor_jobs import JobRunning
from runtime.executor_tasks import TaskRunning, task_context
from runtime.preemption import PREEMPT_SIGNAL
from runtime.processes import ActorInstance, JobProcess, Transfers, Worker, WorkerDied, results_dir, stop_process
from runtime.proto import head_pb2 as pb
from runtime.work import DIRECT_ATTEMPT, node_resource
from runtime.worker import RESULT_DIR_ENV

log = logging.getLogger("launch.runtime.executor")

# a task with its inputs at hand and no larger than this goes to an idle worker from the thread that
# takes it in (it fits the pipe: the write never waits); its thread then only waits for the result,
# while the task already runs
SEND_NOW_BYTES = 32 << 10
FINISHED_REMEMBERED = 20000  # finished (id, attempt)s kept to ignore a re-sent assignment of one

Report = Callable[[pb.ItemResult, int], None]  # (result, the attempt it is of)
ShipLog = Callable[[str, bytes], None]


class Executor(TaskRunning, ActorRunning, JobRunning):
    """Starts assigned items in the order they came, each once the node has room for it: the head may
    hand the node work ahead of time (pipelining), and this is what keeps the node from running more
    than it has. `head` is how payloads and results too large for a message move (Transfers)."""

    def __init__(self, node_id: str, base_env: dict[str, str], report: Report, ship_log: ShipLog,
                 total: dict[str, float] | None = None, head: Transfers | None = None):
        self.node_id = node_id
        self.base_env = base_env
        self.report = report
        self.ship_log = ship_log
        # (and "node:<its id>", which the head counts too: what work with node affinity asks for)
        self.total = {**total, node_resource(node_id): 1.0} if total else {}
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
        self.direct: dict[str, tuple] = {}  # a call sent straight here, in line or running -> (reply, its spec)
        self.direct_done: OrderedDict[str, pb.ItemResult] = OrderedDict()  # (runtime/executor_actors.py)
        self.direct_done_bytes = 0
        self.actors_ended: OrderedDict[str, int] = OrderedDict()  # actor id -> its latest instance that ended here
        self.preempting = False  # the node's cloud gave notice (preempted)
        # an item runs on a thread of its own while it runs (a job, a task waiting on its worker); threads
        # are reused: starting one per item costs more than a trivial task
        self.threads = ThreadPoolExecutor(max_workers=4096, thread_name_prefix="item")

    def _env(self, gpu_ids: list[str], extra: dict[str, str] | None = None) -> dict[str, str]:
        """A worker's environment: the node's, then `extra` (a runtime_env's PYTHONPATH goes first)."""
        env = dict(self.base_env)
        extra = dict(extra or {})
        if extra.get("PYTHONPATH") and env.get("PYTHONPATH"):
            extra["PYTHONPATH"] = f"{extra['PYTHONPATH']}:{env['PYTHONPATH']}"
        env.update(extra)
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
                stop_process(old[1])
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
        if a.spec.payload_size or a.dep_stored or a.spec.runtime_env:
            return None
        if len(a.spec.payload) + sum(len(v) for v in a.dep_values.values()) > SEND_NOW_BYTES:
            return None
        pool = self.idle.get(tuple(a.gpu_ids), [])
        while pool:
            w = pool.pop()
            try:
                w.send(a.spec.payload, dict(a.dep_values), a.item_id, context=task_context(a))
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
                if inst.running or inst.calls:
                    return True
        return False

    def in_flight(self) -> list[tuple[str, int]]:
        """What this node runs or will run, as (id, attempt): after a head restart, the head adopts it."""
        with self.lock:
            calls = []
            for inst in self.actors.values():
                with inst.cond:
                    calls += [*inst.running.values(), *inst.calls]
            # (not the calls sent straight: the head did not give those)
            return ([(i, a) for i, (a, _) in self.running.items()] + [(a.item_id, a.attempt) for a in self.waiting]
                    + [(c.item_id, c.attempt) for c in calls if c.attempt != DIRECT_ATTEMPT]
                    + sorted(k for k in self.reporting if k[1] != DIRECT_ATTEMPT))

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
            if self.cancel_sent(item_id):
                return
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
            stop_process(handle)

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
            stop_process(h)
        return len(pairs)

    def _started(self, a: pb.Assignment, handle) -> bool:
        """Record the process running `a`; False if it was stopped meanwhile (then it is killed)."""
        with self.lock:
            if self.running.get(a.item_id, (None,))[0] == a.attempt:
                self.running[a.item_id] = (a.attempt, handle)
            stop = a.item_id in self.cancelled or (a.item_id, a.attempt) in self.dropped
        if stop:
            stop_process(handle)
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
            if attempt == DIRECT_ATTEMPT:
                result = self._direct_done(result)
                if result is None:
                    return
            self.report(result, attempt)
        finally:
            with self.lock:
                self.reporting.discard(key)

    # --- a preemption notice -------------------------------------------------------------------------

    def preempted(self) -> int:
        """The node's cloud gave notice (the agent wrote it where PREEMPT_FILE_ENV says): every task and
        actor process is signalled, once, so its runtime.on_preemption callbacks run, and every job gets
        SIGTERM (its process group: a job that then ends unfinished is requeued, `_job_ended`). Returns
        how many processes were told."""
        with self.lock:
            self.preempting = True
            handles = [h for _, h in self.running.values()] + list(self.actors.values())
        # an actor is both running and among the actors: its process is told once
        workers = {id(w): w for w in (h.worker if isinstance(h, ActorInstance) else h for h in handles)
                   if isinstance(w, Worker) and w.proc.poll() is None}
        told = 0
        for pid, sig, group in [(w.proc.pid, PREEMPT_SIGNAL, False) for w in workers.values()] + [
                (h.pid, signal.SIGTERM, True) for h in handles if isinstance(h, JobProcess) and h.poll() is None]:
            try:
                os.killpg(pid, sig) if group else os.kill(pid, sig)
                told += 1
            except ProcessLookupError:
                pass
        return told

    def nothing_runs(self) -> bool:
        """No task, actor or job is here, waiting or running (a node being preempted may go now)."""
        with self.lock:
            return not (self.running or self.waiting or self.actors or self.reporting)

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
            stop_process(h)
        for w in workers:
            w.kill()
        self.threads.shutdown(wait=False, cancel_futures=True)
