"""The head service: node registry, heartbeats, the scheduler's front door, and cluster state.

Started on the head node by `python -m runtime.node start`; serves gRPC on the node config's bind host
and port (0: any free port), behind the cluster-token interceptor, and writes the address it serves on
to the node's ~/.launch-runtime/nodes/<hostname>/head.address once it is listening.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import grpc

from core.files import atomic_write
from core.paths import HEAD_ADDRESS, on_this_node
from runtime.auth import TokenInterceptor
from runtime.blobs import drop_blob
from runtime.head_direct import DirectCalls
from runtime.head_nodes import NodeService
from runtime.head_results import ResultWaiting
from runtime.head_state import (PYTHON_VERSION, SERVER_THREADS, STORE_ERRORS, SWEEP_EVERY_S, NodeRecord,
                                StoreUnavailable, Waiter, default_state_dir, item_of, log, stored_result,
                                under_lock)
from runtime.head_store import StoreKeeping
from runtime.head_transfers import Transfers
from runtime.limits import GRPC_OPTIONS, HOLD_BATCH, HOLD_S, STORE_FULL
from runtime.loop_server import LoopServer, loopback_and
from runtime.node import HEAD_LIVENESS, beat, single_instance
from runtime.node_config import NodeRuntimeConfig
from runtime.proto import head_pb2 as pb
from runtime.proto import head_pb2_grpc as pb_grpc
from runtime.scheduler import Scheduler
from runtime.store import ID_PATTERN, Store
from runtime.work import ACTOR, CALL, DONE_STATES, KINDS, OBJECT, PG, QUEUED, InvalidRequest, Item, group_problem, validate_request


ID_USED_TWICE = "an item id was used twice"  # (a client that submitted again after losing the reply knows it by this)
STATE_WAIT_S = 0.5  # GetClusterState waits this long for a busy head, then answers its last state


class HeadServicer(NodeService, StoreKeeping, ResultWaiting, Transfers, DirectCalls, pb_grpc.HeadServicer):
    def __init__(self, heartbeat_interval_s: float, node_timeout_s: float, clock=time.time,
                 node_types: dict[str, dict[str, float]] | None = None, state_dir: Path | None = None,
                 owner_timeout_s: float = 60.0):
        self.heartbeat_interval_s = heartbeat_interval_s
        self.node_timeout_s = node_timeout_s
        self.interval_now, self.timeout_now = heartbeat_interval_s, node_timeout_s  # (pace_heartbeats)
        self.last_state: pb.ClusterState | None = None  # what GetClusterState answered last
        self.clock = clock
        self.nodes: dict[str, NodeRecord] = {}
        self.store = Store(state_dir or default_state_dir())
        self.store_key = self.store.local_key()
        self.sched = Scheduler(node_types, done_item=self._done_item)
        self.lock = threading.RLock()  # guards nodes, sched, the store's writes and waiters
        self.waiters: dict[str, set[Waiter]] = {}  # item id -> the GetResults calls waiting for it
        self.fetched: list[tuple[str, float]] = []  # (id, when) of results a client took, not yet written
        self.fetched_lock = threading.Lock()  # not the head's lock: a woken `get` replies without it
        self.store_error = ""  # why the store could not be written, while it cannot
        # (node id, assignment) placed by a commit that failed: handed out once a later one succeeds
        self.unsent: list[tuple[str, pb.Assignment]] = []
        self.waiting_gets = 0  # GetResults calls being answered now, most waiting (changed only on the loop)
        self.uploaded_args: set[str] = set()  # items whose payload is a file to remove once they are done
        self.sessions = 0  # client Session streams open now (changed only on the server's loop)
        self.demand_watchers: dict = {}  # WatchDemand calls waiting: a callable that wakes one -> what it saw
        self.owner_timeout_s = owner_timeout_s
        self.owners: dict[str, float] = {}  # driver -> when it last said it is alive (or its actor arrived)
        self.recover_until = self._recover(clock())

    # --- the store ----------------------------------------------------------------------------------

    # --- nodes --------------------------------------------------------------------------------------

    def GetClusterState(self, request, context):
        """The nodes, demand and groups now; while the head is busy past STATE_WAIT_S (a burst of work in a
        large cluster), the last state it made, whose `now` says when (the autoscaler's tick waits no longer)."""
        if not self.lock.acquire(timeout=STATE_WAIT_S):
            if self.last_state is not None:
                return self.last_state
            self.lock.acquire()
        try:
            self.last_state = self._cluster_state()
        finally:
            self.lock.release()
        return self.last_state

    def _cluster_state(self) -> pb.ClusterState:
        """(under the lock) The state GetClusterState answers."""
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
                running=n.load if n else 0,
                preempt_at=r.preempt_at, preempt_reason=r.preempt_reason,
            ))
        demand, groups = self.demand_now()
        infeasible = [pb.InfeasibleDemand(shape=pb.Resources(amounts=dict(s)), count=c, reason=why)
                      for s, c, why in self.sched.infeasible_demand()]
        return pb.ClusterState(nodes=nodes, now=self.clock(), demand=demand, infeasible=infeasible, groups=groups,
                               python_version=PYTHON_VERSION, store_dir=str(self.store.blobs),
                               store_key=self.store_key)

    # --- work ---------------------------------------------------------------------------------------

    def Submit(self, request, context):
        """One or many items; ids are the client's where given (a batch is all or nothing)."""
        return pb.SubmitReply(ids=self._submit(request, context))

    @staticmethod
    def _check_specs(specs: list, given: list[str], context) -> None:
        """A submission's ids and specs, each checked by itself (refused whole, naming the first problem)."""
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
            if spec.kind != PG and spec.strategy not in ("", "SPREAD"):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"strategy of a {spec.kind}: '' or SPREAD "
                              f"(got {spec.strategy[:20]!r})")
            if spec.HasField("outcome") and (not given or spec.kind != CALL):  # (runtime/direct.py's hand-over)
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "an outcome comes only with a call that ran "
                              "straight, under its own id")
            if spec.kind == OBJECT and (spec.depends_on or spec.request.amounts):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "an object has no dependencies and needs no resources")
            if spec.kind == PG:
                problem = group_problem([dict(b.amounts) for b in spec.bundles], spec.strategy)
                if problem:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"placement group {spec.name!r}: {problem}")

    def _submit(self, request, context) -> list[str]:
        ids = self._submit_specs(request, context)
        if request.released:
            self._free_released(list(request.released), context)
        return ids

    def _free_released(self, ids: list[str], context) -> None:
        """Values their client put and no longer refers to, never passed on: freed now (after the specs that
        came with them, which may be theirs)."""
        if len(ids) > HOLD_BATCH or not all(ID_PATTERN.fullmatch(i) for i in ids):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"released: at most {HOLD_BATCH} item ids")
        with self.lock:
            for item_id in ids:
                item = self.sched.items.get(item_id)
                if item is not None and item.kind == OBJECT and item.state in DONE_STATES:
                    self.sched.forget(item_id)
            try:
                self.store.free(ids)
            except STORE_ERRORS as e:  # (a full disk): kept until their retention ends
                self._store_failed(e)

    def _submit_specs(self, request, context) -> list[str]:
        specs, given = list(request.specs), list(request.ids)
        self._check_specs(specs, given, context)
        if given and any(spec.HasField("outcome") for spec in specs):  # calls that ran straight (runtime/direct.py)
            adopted = [(i, s) for i, s in zip(given, specs) if s.HasField("outcome")]
            if any(s.outcome.id != i for i, s in adopted):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a call's outcome names another id")
            given, specs = ([i for i, s in zip(given, specs) if not s.HasField("outcome")],
                            [s for s in specs if not s.HasField("outcome")])
            now = self.clock()
            with self.lock:
                self._settle(now, self._record_direct("", [(s.outcome, s) for _, s in adopted], now))
            if not specs:
                return []
        for item_id, spec in zip(given, specs):
            if spec.payload_size and not self._uploaded(self.store.arg_path(item_id), spec.payload_size):
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"the payload of {item_id} was not uploaded")
        now = self.clock()
        with self.lock:
            # (an id the store has already: found here for values, whose upload is made their result below;
            # for the rest, by the store's unique index as they are written, saving a read per submit)
            values = [i for i, spec in zip(given, specs) if spec.kind == OBJECT]
            known = self.store.known(values) if values else ()
            if known or any(i in self.sched.items for i in given) or len(set(given)) != len(given):
                context.abort(grpc.StatusCode.ALREADY_EXISTS, ID_USED_TWICE)
            names = [spec.actor_name for spec in specs if spec.kind == ACTOR and spec.actor_name]
            taken = next((n for n in names if n in self.sched.actor_names), None)
            if taken or len(set(names)) != len(names):
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"an actor named {taken or names[0]!r} exists")
            ids = given or [self.sched.new_id(spec.kind) for spec in specs]
            items = [item_of(item_id, spec, now) for item_id, spec in zip(ids, specs)]
            for item, spec in zip(items, specs):
                if spec.kind == OBJECT and spec.payload_size:  # the value uploaded is its result from now on
                    os.replace(self.store.arg_path(item.id), self.store.result_path(item.id))
            # stored before anything else knows of it: work is accepted only once a restart would keep it
            try:
                self.store.write([(i.id, i.kind, i.name, i.request, i.max_retries, spec.SerializeToString(),
                                   i.submitted_at, QUEUED, 0, "", [], 0.0) for i, spec in zip(items, specs)],
                                 [], [], id_seq=self.sched.id_seq)
            except STORE_ERRORS as e:  # (nothing was written)
                for item in items:
                    if item.kind == OBJECT:
                        drop_blob(self.store.result_path(item.id))
                if isinstance(e, sqlite3.IntegrityError):
                    context.abort(grpc.StatusCode.ALREADY_EXISTS, ID_USED_TWICE)
                self._store_failed(e)
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{STORE_FULL} ({e}: its "
                              "disk full?); nothing was submitted: try again once it has room")
            for item, spec in zip(items, specs):
                self.sched.submit(item, now)
                if spec.payload_size and spec.kind != OBJECT:
                    self.uploaded_args.add(item.id)
            try:
                self._settle(now, [], dict(zip(ids, specs)))
            except StoreUnavailable:
                pass  # they are stored: accepted; what was placed is handed out once the store is written
        return ids

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
        if self.demand_watchers:
            self._wake_demand_watchers()

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
        results.update((i, stored_result(t)) for i, t in self.store.results(rest).items())
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

    def Report(self, request, context):
        self._apply_report(request.node_id, request.results)
        return pb.ReportReply()

    async def ReportStream(self, request_iterator, context):
        """An agent's reports on one stream (no call per report): each applied, and acknowledged when it
        asks. Waits for the next on the server's loop, holding no thread."""
        async for request in request_iterator:
            await under_lock(self.lock, context, self._apply_report, request.node_id, request.results)
            if request.want_ack:
                yield pb.ReportAck(seq=request.seq)

    def _apply_report(self, node_id: str, results) -> None:
        now = self.clock()
        results, direct = self._split_direct(results)
        with self.lock:
            new = self._record_direct(node_id, [(r, r.direct) for r in direct], now) if direct else []
            changed = bool(new)
            for r in results:
                r = self._take_upload(node_id, r)
                item = self.sched.complete(r.id, r.state, now, exit_code=r.exit_code, message=r.message, result=r,
                                           node_id=node_id)
                if item is not None and item.state == QUEUED:
                    log.warning("item %s lost its process (%s); requeued, attempt %d", r.id, r.message, item.attempt)
                changed = changed or item is not None
            if changed:
                self._settle(now, new)

    def Cancel(self, request, context):
        now = self.clock()
        with self.lock:
            try:
                if request.recursive:
                    state, stop = self.sched.cancel_tree(request.id, now)
                else:
                    state, node_id = self.sched.cancel(request.id, now, restart=request.restart)
                    stop = [(request.id, node_id)] if node_id else []
            except KeyError:
                row = self.store.row(request.id)
                if row is None:
                    context.abort(grpc.StatusCode.NOT_FOUND, f"unknown id {request.id}")
                return pb.CancelReply(state=row.state)
            for item_id, node_id in stop:
                if node_id in self.nodes:
                    self.nodes[node_id].outbox.put(pb.Assignment(item_id=item_id, cancel=True))
            self._settle(now)  # a removed placement group frees its nodes for queued work
        return pb.CancelReply(state=state)

    def KeepAlive(self, request, context):
        held = list(request.held)
        if len(held) > HOLD_BATCH or not all(ID_PATTERN.fullmatch(i) for i in held):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"held: at most {HOLD_BATCH} item ids")
        with self.lock:
            if request.owner_id:
                self.owners[request.owner_id[:100]] = self.clock()
            if held:
                try:
                    self.store.hold(held, self.clock() + HOLD_S)
                except STORE_ERRORS as e:  # (a full disk) said like any store failure; renewed next time
                    self._store_failed(e)
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
                            message=r.message, attempt=r.attempt) for r in self.store.done(request.kind, request.limit)]
        counts = self.store.done_counts(request.kind)
        for i in infos:
            counts[i.state] = counts.get(i.state, 0) + 1
        return pb.ListItemsReply(items=sorted(done + infos, key=lambda i: i.submitted_at), counts=counts)

    # --- job logs: shipped by the agent, kept by the head ------------------------------------------

    def _state(self, item_id: str) -> str | None:
        with self.lock:
            item = self.sched.items.get(item_id)
            if item is not None:
                return item.state
        row = self.store.row(item_id)
        return row.state if row is not None else None

    # --- payloads and results too large for a message ---------------------------------------------


def bind_hosts(cfg: NodeRuntimeConfig) -> list[str]:
    """Where the service listens: loopback (the launcher's SSH port forward and the node's own
    processes reach it there) and the address its agents use; never every interface unless asked."""
    if cfg.bind_host:
        return [cfg.bind_host]
    return loopback_and(cfg.address)


def serve(cfg: NodeRuntimeConfig, state_dir: Path | None = None) -> tuple[LoopServer, HeadServicer, int]:
    servicer = HeadServicer(cfg.heartbeat_interval_s, cfg.node_timeout_s, node_types=cfg.node_types,
                            state_dir=state_dir, owner_timeout_s=cfg.owner_timeout_s)
    # A restarted head takes the port it had, so its agents, clients and port forwards find it again.
    port_file = servicer.store.dir / "port"
    saved = int(port_file.read_text()) if not cfg.head_port and port_file.exists() else 0
    server = _server(servicer, cfg.token)
    port = server.listen(bind_hosts(cfg), cfg.head_port or saved)
    if port == 0 and saved:
        log.warning("port %d of the previous head is taken: listening on another", saved)
        server.stop(grace=0).wait()
        server = _server(servicer, cfg.token)
        port = server.listen(bind_hosts(cfg), 0)
    if port == 0:
        server.stop(grace=0).wait()
        raise RuntimeError(f"cannot listen on {', '.join(bind_hosts(cfg))} port {cfg.head_port}")
    atomic_write(port_file, str(port), mode=0o600)
    server.start()
    return server, servicer, port


def _server(servicer: HeadServicer, token: str) -> LoopServer:
    server = LoopServer(SERVER_THREADS, [TokenInterceptor(token)], GRPC_OPTIONS)
    server.add_servicer(pb_grpc.add_HeadServicer_to_server, servicer)
    return server


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
    single_instance("head")
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
    try:
        server.stop(grace=2).wait(timeout=10)
        with servicer.lock:
            servicer.store.close()
        log.info("head service stopped")
        logging.shutdown()
    finally:
        # not a return: a plain handler's thread still reading a request stream waits on the stopped loop
        # for good, and the interpreter would wait for that thread at exit
        os._exit(0)


if __name__ == "__main__":
    main()
