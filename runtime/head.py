"""The head service: node registry, heartbeats, the scheduler's front door, and cluster state.

Started on the head node by `python -m runtime.node start`; serves gRPC on the node config's bind host
and port (0: any free port), behind the cluster-token interceptor, and writes the address it serves on
to the node's ~/.launch-runtime/nodes/<hostname>/head.address once it is listening.
"""

from __future__ import annotations

import collections
import ctypes
import itertools
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from core.files import atomic_write
from core.paths import HEAD_ADDRESS, on_this_node
from runtime.auth import TokenInterceptor
from runtime.limits import CHUNK_BYTES, GRPC_OPTIONS, MAX_OBJECT_BYTES, MAX_REPLY_BYTES, STORE_FULL, too_large
from runtime.node import HEAD_LIVENESS, beat
from runtime.node_config import NodeRuntimeConfig, runtime_dir
from runtime.proto import head_pb2 as pb
from runtime.proto import head_pb2_grpc as pb_grpc
from runtime.scheduler import Scheduler
from runtime.store import ID_PATTERN, Store
from runtime.work import (ACTOR, DONE_STATES, FAILED, FINISHED, INFEASIBLE, KINDS, PG, QUEUED, RUNNING, InvalidRequest,
                          Item, bundle_sum, group_problem, validate_request)

# The cluster's Python: every node runs the same one (lifecycle/runtime_bundle.py), and a driver's must match it
PYTHON_VERSION = "%d.%d" % sys.version_info[:2]
log = logging.getLogger("launch.runtime.head")

# what writing the store raises when the disk is full or failing (sqlite3: "database or disk is full")
STORE_ERRORS = (sqlite3.Error, OSError)


class StoreUnavailable(Exception):
    """The head's store cannot be written now (a full disk): what changed stays in memory until it can."""

ALIVE, DEAD = "alive", "dead"
# A blocking `get` holds one server thread while it waits (asleep on its own event): enough threads that
# a thousand waiting clients never leave heartbeats, reports or ClusterState without one.
SERVER_THREADS = 2048
WAIT_CHECK_S = 2.0  # how often a waiting GetResults looks whether its client went away
SWEEP_EVERY_S = 60.0
ASSIGNMENT_BATCH = 1000
# client Session streams (each holds a server thread for its life): well below SERVER_THREADS, so agents'
# streams, heartbeats and the autoscaler always find one
SESSION_LIMIT = 512
# GetResults calls let wait at once (each holds a server thread while it waits): more are answered at
# once, told to ask again (busy), so heartbeats, reports and the autoscaler always find a thread, however
# many clients wait (with SESSION_LIMIT, half the threads are kept for them)
MAX_BLOCKED_GETS = SERVER_THREADS // 2 - SESSION_LIMIT


def default_state_dir() -> Path:
    """The head's store: kept across head restarts (and `launch up` of the same head)."""
    return runtime_dir() / "head-state"


class Outbox:
    """Assignments waiting for a node's WorkStream, in order; a stream that took some and could not send
    them (it was replaced) puts them back in front."""

    def __init__(self):
        self.items: collections.deque = collections.deque()
        self.cond = threading.Condition()

    def put(self, a: pb.Assignment) -> None:
        with self.cond:
            self.items.append(a)
            self.cond.notify()

    def put_back(self, batch: list[pb.Assignment]) -> None:
        with self.cond:
            self.items.extendleft(reversed(batch))
            self.cond.notify()

    def take(self, timeout: float, most: int, max_bytes: int) -> list[pb.Assignment]:
        """What is waiting, up to `most` or `max_bytes` (at least one), after up to `timeout` for one."""
        with self.cond:
            if not self.items:
                self.cond.wait(timeout)
            batch, size = [], 0
            while self.items and len(batch) < most and (not batch or size < max_bytes):
                batch.append(self.items.popleft())
                size += batch[-1].ByteSize()
            return batch


@dataclass
class NodeRecord:
    """What the head knows of a node beyond its resources: where it is and whether it is heard from."""

    node_id: str
    node_type: str
    address: str
    is_head: bool
    labels: dict[str, str]
    registered_at: float
    last_heartbeat: float
    state: str = ALIVE
    outbox: Outbox = field(default_factory=Outbox)  # Assignments for its WorkStream
    stream: int = 0  # which of its WorkStreams is current (a re-opened one replaces the one before)


class Waiter:
    """A GetResults call waiting for `needed` more of its items to be done."""

    __slots__ = ("needed", "event", "results")

    def __init__(self, needed: int):
        self.needed = needed
        self.event = threading.Event()
        self.results: dict[str, pb.ItemResult] = {}  # handed over as they finish: no read of the store
        if needed <= 0:
            self.event.set()

    def one_done(self, result: pb.ItemResult) -> None:
        self.results[result.id] = result
        self.needed -= 1
        if self.needed <= 0:
            self.event.set()


class HeadServicer(pb_grpc.HeadServicer):
    def __init__(self, heartbeat_interval_s: float, node_timeout_s: float, clock=time.time,
                 node_types: dict[str, dict[str, float]] | None = None, state_dir: Path | None = None,
                 owner_timeout_s: float = 60.0):
        self.heartbeat_interval_s = heartbeat_interval_s
        self.node_timeout_s = node_timeout_s
        self.clock = clock
        self.nodes: dict[str, NodeRecord] = {}
        self.store = Store(state_dir or default_state_dir())
        self.sched = Scheduler(node_types, done_state=self._done_state)
        self.lock = threading.RLock()  # guards nodes, sched, the store's writes and waiters
        self.waiters: dict[str, set[Waiter]] = {}  # item id -> the GetResults calls waiting for it
        self.fetched: list[tuple[str, float]] = []  # (id, when) of results a client took, not yet written
        self.fetched_lock = threading.Lock()  # not the head's lock: a woken `get` replies without it
        self.store_error = ""  # why the store could not be written, while it cannot
        # (node id, assignment) placed by a commit that failed: handed out once a later one succeeds
        self.unsent: list[tuple[str, pb.Assignment]] = []
        self.blocked_gets = 0  # GetResults calls waiting now, each on a thread of its own
        self.uploaded_args: set[str] = set()  # items whose payload is a file to remove once they are done
        self.sessions = 0  # client Session streams open now
        self.owner_timeout_s = owner_timeout_s
        self.owners: dict[str, float] = {}  # driver -> when it last said it is alive (or its actor arrived)
        self.recover_until = self._recover(clock())

    # --- the store ----------------------------------------------------------------------------------

    def _recover(self, now: float) -> float:
        """Take back what a previous head left in the store: queued work queues again, running work waits
        for its node to say it still runs it. Returns when the wait for those nodes ends."""
        self.sched.resume_ids(self.store.id_seq())
        rows = self.store.live()
        for row in rows:
            item = _item(row.id, pb.WorkSpec.FromString(row.spec), row.submitted_at)
            item.attempt, item.node_id, item.gpu_ids, item.started_at = (row.attempt, row.node_id, row.gpu_ids,
                                                                         row.started_at)
            # a placement group is placed again (its bundles' places are not kept); what ran in it is adopted
            # as its node's work
            if row.state == RUNNING and row.kind != PG:
                self.sched.recover(item)
            else:
                self.sched.submit(item, now)
        self._commit()
        if rows:
            log.info("recovered %d item(s) from the store (%d were running)", len(rows), len(self.sched.recovering))
        # agents retry every few seconds at most: past this, a node that has not come back is gone
        return now + self.node_timeout_s + 10.0

    def _store_failed(self, e: Exception) -> None:
        if str(e) != self.store_error:  # said once per cause, not on every call while it lasts
            log.error("the store cannot be written: %s; new work is refused until it can", e)
        self.store_error = str(e)

    def retry_store(self) -> None:
        """(the clock) What a failed commit kept in memory goes to the store once it can be written."""
        if self.store_error:
            with self.lock:
                try:
                    self._commit()
                except StoreUnavailable:
                    return
                self._hand_out()

    def _done_state(self, item_id: str) -> str | None:
        row = self.store.row(item_id)
        return row.state if row is not None and row.state in DONE_STATES else None

    def _commit(self, new: list[tuple[Item, bytes]] = ()) -> None:
        """(under self.lock) Wake the GetResults calls waiting for items now done, write what changed (and
        `new` items) to the store in one transaction, and let done items leave memory."""
        live, done = [], []
        new_ids = {i.id for i, _ in new}
        for item in self.sched.take_dirty():
            if item.state in DONE_STATES:
                done.append(item)
            elif item.id not in new_ids:  # a new item is written as it is now
                live.append((item.id, item.state, item.attempt, item.node_id, item.gpu_ids, item.started_at))
        rows = [(i.id, i.kind, i.name, i.request, i.max_retries, spec, i.submitted_at,
                 *((QUEUED, 0, "", [], 0.0) if i.state in DONE_STATES else
                   (i.state, i.attempt, i.node_id, i.gpu_ids, i.started_at))) for i, spec in new]
        # Waiters are woken first: a woken `get` replies from the results handed to it, while the store is
        # written. Nothing is lost if the head dies in between: the agent keeps a result until the head
        # acknowledges its report, which it does only once this returns.
        done_now = {item.id: item for item in done}
        for item_id in self.sched.take_finished():
            waiters = self.waiters.pop(item_id, ())
            if waiters:
                result = self._result_of(done_now[item_id])
                for waiter in waiters:
                    waiter.one_done(result)
        if live or done or rows:
            try:
                self.store.write(rows, live, [self._done_row(item) for item in done],
                                 id_seq=self.sched.id_seq if rows else None)
            except STORE_ERRORS as e:
                # kept in memory, written by a later commit (the clock retries): a report that brought
                # these is not acknowledged, so its agent sends it again
                self.sched.dirty.update([i for i, *_ in live] + [item.id for item in done])
                self._store_failed(e)
                raise StoreUnavailable(f"the head cannot write its store ({e}: its disk full?)") from None
            if self.store_error:
                log.info("the store is written again")
                self.store_error = ""
        for item in done:
            self.sched.forget(item.id)
            if item.id in self.uploaded_args:
                self.uploaded_args.discard(item.id)
                self.store.arg_path(item.id).unlink(missing_ok=True)

    @staticmethod
    def _result_of(item: Item) -> pb.ItemResult:
        r = item.result
        res = pb.ItemResult(id=item.id, state=item.state, message=item.message, exit_code=item.exit_code,
                            node_id=item.node_id)
        if r is not None:
            res.value, res.error, res.value_size, res.stored = r.value, r.error, r.value_size, r.stored
        return res

    @staticmethod
    def _done_row(item: Item) -> tuple:
        r = item.result
        value, error, size, stored = (r.value, r.error, r.value_size, r.stored) if r is not None else (None, None, 0, False)
        return (item.id, item.state, item.attempt, item.node_id, item.finished_at, item.exit_code, item.message,
                value, error, size, stored)

    def _take_upload(self, node_id: str, r: pb.ItemResult) -> pb.ItemResult:
        """(under self.lock) A result its node uploaded becomes the item's result, if the item is that
        node's: before the completion counts, so whoever is given the value next finds it."""
        item = self.sched.items.get(r.id)
        if not (r.stored and r.state == FINISHED and item is not None and item.state == RUNNING
                and item.node_id == node_id):
            return r
        try:
            os.replace(self.store.upload_path(r.id, node_id), self.store.result_path(r.id))
        except OSError as e:
            return pb.ItemResult(id=r.id, state=FAILED, message=f"its result was lost on the head ({e.strerror})")
        return r

    # --- nodes --------------------------------------------------------------------------------------

    def RegisterNode(self, request, context):
        now = self.clock()
        total = dict(request.total.amounts)
        with self.lock:
            old = self.nodes.get(request.node_id)
            rec = NodeRecord(request.node_id, request.node_type, request.address, request.is_head,
                             dict(request.labels), now, now)
            if old is not None:
                rec.outbox = old.outbox
                old.stream += 1  # the old agent's stream, if still open, stops taking from the outbox
            self.nodes[request.node_id] = rec
            lost, drop = self.sched.add_node(request.node_id, request.node_type, total, request.is_head, now,
                                             list(request.gpu_ids), [(r.id, r.attempt) for r in request.running],
                                             request.first)
            self._settle(now)
        if lost:
            log.warning("node %s registered again: %d item(s) it ran were requeued", request.node_id, len(lost))
        adopted = len(request.running) - len(drop)
        log.info("node %s (%s) registered from %s: %s%s", request.node_id, request.node_type, request.address, total,
                 f"; it still runs {adopted} item(s)" if adopted else "")
        return pb.RegisterNodeReply(heartbeat_interval_s=self.heartbeat_interval_s,
                                    drop=[pb.RunningItem(id=i, attempt=a) for i, a in drop])

    def Heartbeat(self, request, context):
        with self.lock:
            rec = self.nodes.get(request.node_id)
            if rec is None or rec.state == DEAD:
                return pb.HeartbeatReply(known=False)
            rec.last_heartbeat = self.clock()
        return pb.HeartbeatReply(known=True)

    def _declare_dead(self, r: NodeRecord, now: float, why: str, expected: bool = False) -> int:
        """(under self.lock) The node is gone: what it ran goes back to the queue or fails."""
        r.state = DEAD
        touched = self.sched.remove_node(r.node_id, now, f"its node {why}")
        log.log(logging.INFO if expected else logging.WARNING, "node %s %s: declared dead; %d item(s) requeued "
                "or failed", r.node_id, why, len(touched))
        return len(touched)

    def mark_dead_nodes(self) -> list[str]:
        """Nodes silent for longer than the timeout are dead: their work goes back to the queue. After a
        restart, work whose node never came back goes back too."""
        now = self.clock()
        newly = []
        with self.lock:
            for r in self.nodes.values():
                if r.state == ALIVE and now - r.last_heartbeat > self.node_timeout_s:
                    newly.append(r.node_id)
                    self._declare_dead(r, now, f"missed heartbeats for {self.node_timeout_s:.0f}s")
            expired = self.sched.expire_recovering(now) if self.sched.recovering and now > self.recover_until else []
            if expired:
                log.warning("%d item(s) that ran before the head restarted lost their node: requeued or failed",
                            len(expired))
            if newly or expired:
                self._settle(now)
            for item in self.sched.to_revoke(now):
                self.nodes[item.node_id].outbox.put(pb.Assignment(item_id=item.id, revoke=True))
        return newly

    def sweep(self) -> int:
        """Done items whose retention is over leave the store."""
        self.flush_fetched()
        with self.lock:
            return self.store.sweep(self.clock())

    def RemoveNode(self, request, context):
        now = self.clock()
        with self.lock:
            r = self.nodes.get(request.node_id)
            if r is None or r.state != ALIVE:
                return pb.RemoveNodeReply(known=r is not None, requeued=0)
            requeued = self._declare_dead(r, now, f"removed ({request.reason or 'terminated'})", expected=True)
            self._settle(now)
        return pb.RemoveNodeReply(known=True, requeued=requeued)

    def Drain(self, request, context):
        with self.lock:
            drained, running = self.sched.drain(request.node_id, undrain=request.undrain)
            if request.undrain:
                self._settle(self.clock())
        return pb.DrainReply(drained=drained, running=running)

    def GetClusterState(self, request, context):
        with self.lock:
            nodes = []
            for r in self.nodes.values():
                n = self.sched.nodes.get(r.node_id)
                nodes.append(pb.NodeState(
                    node_id=r.node_id, node_type=r.node_type, address=r.address, is_head=r.is_head,
                    state=r.state,
                    total=pb.Resources(amounts=n.total if n else {}),
                    available=pb.Resources(amounts=n.available if n else {}),
                    labels=r.labels, registered_at=r.registered_at, last_heartbeat=r.last_heartbeat,
                    idle_since=n.idle_since if n else 0.0, draining=bool(n and n.draining),
                    running=len(n.running) + len(n.prefetched) + len(n.reserved) if n else 0,
                ))
            demand = [pb.ShapeDemand(shape=pb.Resources(amounts=dict(s)), count=c) for s, c in self.sched.demand()]
            infeasible = [pb.InfeasibleDemand(shape=pb.Resources(amounts=dict(s)), count=c, reason=why)
                          for s, c, why in self.sched.infeasible_demand()]
            groups = [pb.GroupDemand(bundles=[pb.Resources(amounts=dict(b)) for b in bundles], strategy=strategy,
                                     count=c) for bundles, strategy, c in self.sched.group_demand()]
        return pb.ClusterState(nodes=nodes, now=self.clock(), demand=demand, infeasible=infeasible, groups=groups,
                               python_version=PYTHON_VERSION)

    # --- work ---------------------------------------------------------------------------------------

    def Submit(self, request, context):
        """One or many items; ids are the client's where given (a batch is all or nothing)."""
        return pb.SubmitReply(ids=self._submit(request, context))

    def _submit(self, request, context) -> list[str]:
        specs, given = list(request.specs), list(request.ids)
        if given and len(given) != len(specs):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ids and specs differ in length")
        for item_id in given:
            if not ID_PATTERN.fullmatch(item_id):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"item id {item_id[:100]!r} is not of "
                              f"letters, digits, '_', '.', '-' (1-100, not starting with a symbol)")
        for spec in specs:
            if spec.kind not in KINDS:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"kind must be one of {', '.join(KINDS)}, "
                              f"got {spec.kind[:20]!r}")
            try:
                validate_request(dict(spec.request.amounts))
            except InvalidRequest as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            if len(spec.actor_name) > 200:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "an actor's name may be 200 characters at most")
            if spec.kind == PG:
                problem = group_problem([dict(b.amounts) for b in spec.bundles], spec.strategy)
                if problem:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"placement group {spec.name!r}: {problem}")
        for item_id, spec in zip(given, specs):
            if spec.payload_size and not self._uploaded(self.store.arg_path(item_id), spec.payload_size):
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"the payload of {item_id} was not uploaded")
        now = self.clock()
        with self.lock:
            known = self.store.known(given) if given else ()
            if known or any(i in self.sched.items for i in given) or len(set(given)) != len(given):
                context.abort(grpc.StatusCode.ALREADY_EXISTS, "an item id was used twice")
            names = [spec.actor_name for spec in specs if spec.kind == ACTOR and spec.actor_name]
            taken = next((n for n in names if n in self.sched.actor_names), None)
            if taken or len(set(names)) != len(names):
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"an actor named {taken or names[0]!r} exists")
            ids = given or [self.sched.new_id(spec.kind) for spec in specs]
            items = [_item(item_id, spec, now) for item_id, spec in zip(ids, specs)]
            # stored before anything else knows of it: work is accepted only once a restart would keep it
            try:
                self.store.write([(i.id, i.kind, i.name, i.request, i.max_retries, spec.SerializeToString(),
                                   i.submitted_at, QUEUED, 0, "", [], 0.0) for i, spec in zip(items, specs)],
                                 [], [], id_seq=self.sched.id_seq)
            except STORE_ERRORS as e:
                self._store_failed(e)
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{STORE_FULL} ({e}: its "
                              "disk full?); nothing was submitted: try again once it has room")
            for item, spec in zip(items, specs):
                self.sched.submit(item, now)
                if spec.payload_size:
                    self.uploaded_args.add(item.id)
            try:
                self._settle(now, [], dict(zip(ids, specs)))
            except StoreUnavailable:
                pass  # they are stored: accepted; what was placed is handed out once the store is written
        return ids

    @staticmethod
    def _uploaded(path: Path, size: int) -> bool:
        try:
            return path.stat().st_size == size
        except OSError:
            return False

    def _settle(self, now: float, new: list[tuple[Item, bytes]] = (), new_specs: dict | None = None) -> None:
        """(under self.lock) After a change: place what can run now, store it all in one transaction, and
        only then hand the placed items to their nodes (a node never runs what a crash could forget)."""
        self.unsent += [(self.sched.items[a.item_id].node_id, a) for a in self._dispatch(now, new_specs or {})]
        self._commit(new)  # if it cannot be written, what was placed waits in self.unsent for one that is
        self._hand_out()
        stop, self.sched.to_stop = self.sched.to_stop, []  # work in a placement group just removed
        for item_id, node_id in stop:
            if node_id in self.nodes:
                self.nodes[node_id].outbox.put(pb.Assignment(item_id=item_id, cancel=True))

    def _hand_out(self) -> None:
        """(under self.lock, after a commit) The placed items go to their nodes; one placed before a commit
        that failed only if it is still that node's to run, at that attempt."""
        unsent, self.unsent = self.unsent, []
        for node_id, a in unsent:
            item = self.sched.items.get(a.item_id)
            if (item is not None and item.node_id == node_id and item.attempt == a.attempt and node_id in self.nodes
                    and item.state not in DONE_STATES):
                self.nodes[node_id].outbox.put(a)

    def _dispatch(self, now: float, known_specs: dict[str, pb.WorkSpec]) -> list[pb.Assignment]:
        """(under self.lock) Schedule; the Assignments of the newly placed items."""
        return self._assignments(self.sched.schedule(now), known_specs)

    def _assignments(self, assigned: list[Item], known_specs: dict[str, pb.WorkSpec]) -> list[pb.Assignment]:
        """(under self.lock) The Assignments of these placed items: spec, GPUs, dependency values."""
        if not assigned:
            return []
        specs = {i.id: known_specs[i.id] for i in assigned if i.id in known_specs}
        missing = [i.id for i in assigned if i.id not in specs]
        if missing:
            specs.update((i, pb.WorkSpec.FromString(b)) for i, b in self.store.specs(missing).items())
        # a dependency done just now is still in memory, not yet in the store
        results = {}
        for d in {d for spec in specs.values() for d in spec.depends_on}:
            dep = self.sched.items.get(d)
            if dep is not None and dep.result is not None:
                results[d] = dep.result
        rest = sorted({d for spec in specs.values() for d in spec.depends_on} - set(results))
        results.update((i, _stored_result(t)) for i, t in self.store.results(rest).items())
        out = []
        for item in assigned:
            spec = specs[item.id]
            a = pb.Assignment(item_id=item.id, spec=spec, gpu_ids=item.gpu_ids, attempt=item.attempt)
            for d in spec.depends_on:
                if results[d].stored:
                    a.dep_stored.append(d)
                else:
                    a.dep_values[d] = results[d].value or b""
            out.append(a)
        return out

    def WorkStream(self, request, context):
        """The node's assignments, in order. A re-opened stream replaces the one before (which stops, and
        puts back what it took but did not send) and first sends again everything the node is counted
        to run: one sent on a stream that broke may never have arrived. The agent ignores what it has."""
        with self.lock:
            rec = self.nodes.get(request.node_id)
            if rec is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"node {request.node_id} is not registered")
            rec.stream += 1
            me = rec.stream
            node = self.sched.nodes.get(request.node_id)
            again = [] if me == 1 or node is None else self._assignments(self._given_to(node), {})
        for start in range(0, len(again), ASSIGNMENT_BATCH):
            yield pb.Assignments(items=again[start:start + ASSIGNMENT_BATCH])
        while context.is_active() and rec.stream == me:
            batch = rec.outbox.take(0.5, ASSIGNMENT_BATCH, MAX_REPLY_BYTES)
            if not batch:
                continue
            if rec.stream != me or not context.is_active():
                rec.outbox.put_back(batch)
                return
            yield pb.Assignments(items=batch)

    def _given_to(self, node) -> list[Item]:
        """(under self.lock) What a node is counted to run, in an order it can start it in: actors before
        their calls (in line), then what was given ahead."""
        ids = [*sorted(node.running), *self.sched.calls_given_on(node), *node.prefetched]
        return [self.sched.items[i] for i in ids]

    def Report(self, request, context):
        self._apply_report(request.node_id, request.results)
        return pb.ReportReply()

    def ReportStream(self, request_iterator, context):
        """An agent's reports on one stream (no call per report): each applied, and acknowledged when it asks."""
        for request in request_iterator:
            self._apply_report(request.node_id, request.results)
            if request.want_ack:
                yield pb.ReportAck(seq=request.seq)

    def _apply_report(self, node_id: str, results) -> None:
        now = self.clock()
        with self.lock:
            changed = False
            for r in results:
                r = self._take_upload(node_id, r)
                item = self.sched.complete(r.id, r.state, now, exit_code=r.exit_code, message=r.message, result=r,
                                           node_id=node_id)
                if item is not None and item.state == QUEUED:
                    log.warning("item %s lost its process (%s); requeued, attempt %d", r.id, r.message, item.attempt)
                changed = changed or item is not None
            if changed:
                self._settle(now)

    def GetResults(self, request, context):
        return self._get_results(request, context, admit=True)

    def Session(self, request_iterator, context):
        """A client's GetResults as messages on one stream: the latency of a `get` without a call's setup.
        Each session holds a server thread while it lives, so there are at most SESSION_LIMIT; a client
        refused one uses GetResults."""
        with self.lock:
            if self.sessions >= SESSION_LIMIT:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many client sessions: use GetResults")
            self.sessions += 1
        try:
            for request in request_iterator:
                yield pb.SessionReply(reply=self._get_results(request.get, context))
        finally:
            with self.lock:
                self.sessions -= 1

    def _get_results(self, request, context, admit: bool = False) -> pb.GetResultsReply:
        """Waits on an event set once enough of its items are done: each item's completion counts once
        (no re-scan of the others, no polling); a check every few seconds only notices a client that went
        away. `admit`: a call that would hold a thread of its own waits only while fewer than
        MAX_BLOCKED_GETS do; else it is answered at once, busy."""
        if request.submit.specs:
            self._submit(request.submit, context)
        ids = list(dict.fromkeys(request.ids))
        deadline = None if request.timeout_s < 0 else time.monotonic() + request.timeout_s
        with self.lock:
            absent = [i for i in ids if i not in self.sched.items]
        # an id neither live nor stored is refused before any wait; with nothing to wait for, reading the
        # results finds it (one read of the store, not two)
        if absent and len(absent) < len(ids):
            unknown = set(absent) - self.store.known(absent)
            if unknown:
                context.abort(grpc.StatusCode.NOT_FOUND, f"unknown id {min(unknown)}")
        with self.lock:
            live = [i for i in ids if i in self.sched.items]
            want = min(request.num_returns or len(ids), len(ids)) - (len(ids) - len(live))
            waiter = Waiter(max(want, 0))
            if want > 0:
                for i in live:
                    self.waiters.setdefault(i, set()).add(waiter)
            busy = admit and not waiter.event.is_set() and request.timeout_s != 0 and \
                self.blocked_gets >= MAX_BLOCKED_GETS
            blocks = admit and not busy and not waiter.event.is_set()
            self.blocked_gets += blocks
            # a task (or job) waiting for other work lends its CPUs to it meanwhile
            lent = not busy and bool(request.caller_id) and not waiter.event.is_set() and self._lend(request.caller_id)
        try:
            while not waiter.event.is_set() and not busy:
                left = None if deadline is None else deadline - time.monotonic()
                if (left is not None and left <= 0) or not context.is_active():
                    break
                waiter.event.wait(timeout=WAIT_CHECK_S if left is None else min(left, WAIT_CHECK_S))
        finally:
            if blocks:
                with self.lock:
                    self.blocked_gets -= 1
            if waiter.event.is_set() and all(i in waiter.results for i in live):
                # every item it waited for was handed over (and its registration dropped) by _commit
                done = [i for i in ids if i in waiter.results or i not in live]
            else:
                with self.lock:
                    for i in live:
                        waiting = self.waiters.get(i)
                        if waiting is not None:
                            waiting.discard(waiter)
                            if not waiting:
                                del self.waiters[i]
                    done = [i for i in ids if i not in self.sched.items or i in waiter.results]
            if lent:
                with self.lock:
                    node_id = self.sched.take_back_cpu(request.caller_id)
                    if node_id is not None:
                        self.nodes[node_id].outbox.put(pb.Assignment(item_id=request.caller_id, take_back_cpu=True))
        reply = self._results_reply(done, waiter.results, context)
        reply.busy = busy
        return reply

    def _lend(self, caller_id: str) -> bool:
        """(under self.lock) The caller's CPUs count as free on its node (which is told so, ahead of any
        work placed there now) until the caller's `get` returns."""
        node_id = self.sched.lend_cpu(caller_id)
        if node_id is None:
            return False
        self.nodes[node_id].outbox.put(pb.Assignment(item_id=caller_id, lend_cpu=True))
        self._settle(self.clock())
        return True

    def _results_reply(self, done_ids: list[str], known: dict[str, pb.ItemResult], context) -> pb.GetResultsReply:
        """As many results as fit MAX_REPLY_BYTES (at least one); the client asks again for the rest. Read
        from the store outside the head's lock: a done item's row no longer changes. Each result is made
        in the reply itself (made apart, the reply would copy them all once more)."""
        reply, size = pb.GetResultsReply(), 0
        for start in range(0, len(done_ids), 500):
            chunk = done_ids[start:start + 500]
            stored = self.store.results([i for i in chunk if i not in known])
            for item_id in chunk:
                r = known.get(item_id)
                if r is not None:
                    reply.results.append(r)
                    size += r.ByteSize()
                elif item_id in stored:
                    size += _stored_result(stored[item_id], reply.results.add).ByteSize()
                else:
                    context.abort(grpc.StatusCode.NOT_FOUND, f"unknown id {item_id}")
                if size > MAX_REPLY_BYTES and len(reply.results) > 1:
                    del reply.results[-1]
                    reply.truncated = True
                    self._fetched(reply.results)
                    return reply
        self._fetched(reply.results)
        return reply

    def _fetched(self, results) -> None:
        """Noted now, written with the next sweep tick (it only starts the retention clock)."""
        if results:
            now = self.clock()
            with self.fetched_lock:
                self.fetched.extend((r.id, now) for r in results)

    def flush_fetched(self) -> None:
        with self.fetched_lock:
            fetched, self.fetched = self.fetched, []
        if fetched:
            with self.lock:  # the store's writes are the head lock's
                self.store.mark_fetched(fetched)

    def Cancel(self, request, context):
        now = self.clock()
        with self.lock:
            try:
                state, node_id = self.sched.cancel(request.id, now)
            except KeyError:
                row = self.store.row(request.id)
                if row is None:
                    context.abort(grpc.StatusCode.NOT_FOUND, f"unknown id {request.id}")
                return pb.CancelReply(state=row.state)
            if node_id and node_id in self.nodes:
                self.nodes[node_id].outbox.put(pb.Assignment(item_id=request.id, cancel=True))
            self._settle(now)  # a removed placement group frees its nodes for queued work
        return pb.CancelReply(state=state)

    def KeepAlive(self, request, context):
        with self.lock:
            self.owners[request.owner_id[:100]] = self.clock()
        return pb.KeepAliveReply()

    def expire_owners(self) -> list[str]:
        """Actors whose driver went silent past the owner timeout are killed. A driver is timed from
        its last KeepAlive, or from when this head first saw one of its actors (after a restart too)."""
        now = self.clock()
        killed = []
        with self.lock:
            for actor_id in list(self.sched.actors):
                item = self.sched.items[actor_id]
                owner = item.owner_id
                if owner and not item.cancel_requested and now - self.owners.setdefault(owner, now) > self.owner_timeout_s:
                    state, node_id = self.sched.cancel(actor_id, now)
                    if node_id and node_id in self.nodes:
                        self.nodes[node_id].outbox.put(pb.Assignment(item_id=actor_id, cancel=True))
                    killed.append(actor_id)
            if killed:
                log.warning("killed %d actor(s) whose driver went silent for %.0f s", len(killed), self.owner_timeout_s)
                self._settle(now)
            live = {self.sched.items[a].owner_id for a in self.sched.actors}
            for owner in [o for o in self.owners if o not in live and now - self.owners[o] > self.owner_timeout_s]:
                del self.owners[owner]
        return killed

    def GetActor(self, request, context):
        with self.lock:
            item = self.sched.actor_by_name(request.name)
            if item is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no live actor is named {request.name[:100]!r}")
            return pb.GetActorReply(id=item.id, state=item.state, class_name=item.name)

    def ListItems(self, request, context):
        with self.lock:
            live = [i for i in self.sched.items.values() if not request.kind or i.kind == request.kind]
            infos = [pb.ItemInfo(id=i.id, kind=i.kind, name=i.name, state=i.state, node_id=i.node_id,
                                 request=pb.Resources(amounts=i.request), submitted_at=i.submitted_at,
                                 started_at=i.started_at, finished_at=i.finished_at, exit_code=i.exit_code,
                                 message=i.message, attempt=i.attempt) for i in live]
        done = [pb.ItemInfo(id=r.id, kind=r.kind, name=r.name, state=r.state, node_id=r.node_id,
                            request=pb.Resources(amounts=r.request), submitted_at=r.submitted_at,
                            started_at=r.started_at, finished_at=r.finished_at, exit_code=r.exit_code,
                            message=r.message, attempt=r.attempt) for r in self.store.done(request.kind)]
        return pb.ListItemsReply(items=sorted(done + infos, key=lambda i: i.submitted_at))

    # --- job logs: shipped by the agent, kept by the head ------------------------------------------

    def _state(self, item_id: str) -> str | None:
        with self.lock:
            item = self.sched.items.get(item_id)
            if item is not None:
                return item.state
        row = self.store.row(item_id)
        return row.state if row is not None else None

    def AppendLog(self, request, context):
        if self._state(request.item_id) is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown id {request.item_id}")
        with os.fdopen(os.open(self.store.log_path(request.item_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
                       "ab") as f:
            f.write(request.data)
        return pb.AppendLogReply()

    def JobLogs(self, request, context):
        state = self._state(request.id)
        if state is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown job {request.id}")
        done = state in DONE_STATES or state == INFEASIBLE
        try:
            with open(self.store.log_path(request.id), "rb") as f:
                f.seek(request.offset)
                data = f.read(1 << 20)
        except FileNotFoundError:
            data = b""
        # done only once everything was read: the agent ships the log tail before it reports
        return pb.JobLogsReply(data=data, offset=request.offset + len(data), done=done and len(data) < (1 << 20))

    # --- payloads and results too large for a message ---------------------------------------------

    def _receive(self, chunks, path_for, context) -> pb.UploadReply:
        """Write an upload to its file as it arrives (never whole in memory); the first chunk names it."""
        first = next(chunks, None)
        if first is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "an upload with no chunks")
        if not ID_PATTERN.fullmatch(first.id):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"item id {first.id[:100]!r} is not valid")
        path = path_for(first, context)
        size = 0
        tmp = path.with_name(path.name + ".tmp")
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            for chunk in itertools.chain([first], chunks):
                size += len(chunk.data)
                if size > MAX_OBJECT_BYTES:
                    tmp.unlink(missing_ok=True)
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, too_large("upload", size))
                f.write(chunk.data)
        os.replace(tmp, path)
        return pb.UploadReply(size=size)

    def _send(self, path: Path, offset: int, context):
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            context.abort(grpc.StatusCode.NOT_FOUND, f"nothing stored at {path.name}")
        with f:
            f.seek(offset)
            while context.is_active():
                data = f.read(CHUNK_BYTES)
                if not data:
                    return
                yield pb.Chunk(data=data)

    def UploadArgs(self, request_iterator, context):
        def path_for(first, context):
            if self._state(first.id) is not None:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"item {first.id} was submitted already")
            return self.store.arg_path(first.id)

        return self._receive(iter(request_iterator), path_for, context)

    def FetchArgs(self, request, context):
        return self._send(self.store.arg_path(request.id), request.offset, context)

    def UploadResult(self, request_iterator, context):
        def path_for(first, context):
            with self.lock:
                item = self.sched.items.get(first.id)
                if item is None or item.state != RUNNING or item.node_id != first.node_id:
                    context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{first.id} does not run on {first.node_id}")
            return self.store.upload_path(first.id, first.node_id)

        return self._receive(iter(request_iterator), path_for, context)

    def FetchResult(self, request, context):
        return self._send(self.store.result_path(request.id), request.offset, context)


def _stored_result(t: tuple, make=pb.ItemResult) -> pb.ItemResult:
    """A result as Store.results reads it, made by `make` (a reply's `results.add` makes it in place)."""
    item_id, state, message, exit_code, node_id, value, error, value_size, stored = t
    return make(id=item_id, state=state, message=message, exit_code=exit_code, node_id=node_id,
                value=value or b"", error=error or b"", value_size=value_size, stored=bool(stored))


def _item(item_id: str, spec: pb.WorkSpec, now: float) -> Item:
    bundles = [dict(b.amounts) for b in spec.bundles]
    return Item(id=item_id, kind=spec.kind, name=spec.name or spec.kind,
                request=bundle_sum(bundles) if spec.kind == PG else dict(spec.request.amounts),
                max_retries=max(spec.max_retries, 0), submitted_at=now, depends_on=set(spec.depends_on),
                actor_id=spec.actor_id, actor_name=spec.actor_name, pg_id=spec.pg_id,
                bundle_index=spec.bundle_index if spec.pg_id else -1, bundles=bundles, strategy=spec.strategy,
                owner_id=spec.owner_id if spec.kind == ACTOR else "")


def bind_hosts(cfg: NodeRuntimeConfig) -> list[str]:
    """Where the service listens: loopback (the launcher's SSH port forward and the node's own
    processes reach it there) and the address its agents use; never every interface unless asked."""
    if cfg.bind_host:
        return [cfg.bind_host]
    return ["127.0.0.1"] + ([cfg.address] if cfg.address not in ("127.0.0.1", "localhost", "") else [])


def serve(cfg: NodeRuntimeConfig, state_dir: Path | None = None) -> tuple[grpc.Server, HeadServicer, int]:
    servicer = HeadServicer(cfg.heartbeat_interval_s, cfg.node_timeout_s, node_types=cfg.node_types,
                            state_dir=state_dir, owner_timeout_s=cfg.owner_timeout_s)
    # Threads: each agent holds a WorkStream open and each get() may block, so leave plenty.
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=SERVER_THREADS), interceptors=[TokenInterceptor(cfg.token)],
        options=GRPC_OPTIONS,
    )
    pb_grpc.add_HeadServicer_to_server(servicer, server)
    # A restarted head takes the port it had, so its agents, clients and port forwards find it again.
    port_file = servicer.store.dir / "port"
    saved = int(port_file.read_text()) if not cfg.head_port and port_file.exists() else 0
    port = _listen(server, bind_hosts(cfg), cfg.head_port or saved)
    if port == 0 and saved:
        log.warning("port %d of the previous head is taken: listening on another", saved)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=SERVER_THREADS),
                             interceptors=[TokenInterceptor(cfg.token)], options=GRPC_OPTIONS)
        pb_grpc.add_HeadServicer_to_server(servicer, server)
        port = _listen(server, bind_hosts(cfg), 0)
    if port == 0:
        raise RuntimeError(f"cannot listen on {', '.join(bind_hosts(cfg))} port {cfg.head_port}")
    atomic_write(port_file, str(port), mode=0o600)
    server.start()
    return server, servicer, port


def _listen(server: grpc.Server, hosts: list[str], port: int) -> int:
    """Bind every host to one port (0: the first bind picks it); 0 if any bind fails."""
    for host in hosts:
        try:
            port = server.add_insecure_port(f"{host}:{port}")
        except RuntimeError:
            return 0
        if port == 0:
            return 0
    return port


def housekeeping(servicer: HeadServicer, stop: threading.Event, every_s: float,
                 sweep_every_s: float = SWEEP_EVERY_S) -> None:
    """The head's clock: dead nodes, prefetches to take back, fetched-marks to write, the store's log to
    checkpoint; now and then the
    sweep of expired items, and freed memory handed back to the system (Python keeps freed heap pages
    otherwise: a head that once held 100k items would stay that large)."""
    last_sweep = time.monotonic()
    while not stop.wait(every_s):
        beat(HEAD_LIVENESS)
        try:
            servicer.retry_store()
            servicer.mark_dead_nodes()
            servicer.expire_owners()
            servicer.flush_fetched()
            servicer.store.checkpoint(writers=servicer.lock)
            if time.monotonic() - last_sweep > sweep_every_s:
                last_sweep = time.monotonic()
                servicer.sweep()
                _trim_heap()
        except (*STORE_ERRORS, StoreUnavailable) as e:  # a full disk: the head serves on, and recovers
            servicer._store_failed(e)


def _trim_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = NodeRuntimeConfig.load()
    server, servicer, port = serve(cfg)
    address = f"{cfg.address}:{port}"
    # Written last and atomically: its presence means the head is serving.
    addr_file = on_this_node(HEAD_ADDRESS)
    atomic_write(addr_file, address, mode=0o644)
    log.info("head service listening on %s (bound to %s)", address, ", ".join(bind_hosts(cfg)))

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    housekeeping(servicer, stop, min(1.0, cfg.node_timeout_s / 4))
    addr_file.unlink(missing_ok=True)
    server.stop(grace=2).wait()
    log.info("head service stopped")


if __name__ == "__main__":
    main()
