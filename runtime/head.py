"""The head service: node registry, heartbeats, the scheduler's front door, and cluster state.

Started on the head node by `python -m runtime.node start`; serves gRPC on the node config's bind host
and port (0: any free port), behind the cluster-token interceptor, and writes the address it serves on
to ~/.launch-runtime/head.address once it is listening.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from core.files import atomic_write
from core.paths import HEAD_ADDRESS, on_this_node
from runtime.auth import TokenInterceptor
from runtime.limits import GRPC_OPTIONS, MAX_REPLY_BYTES
from runtime.node_config import NodeRuntimeConfig, runtime_dir
from runtime.proto import head_pb2 as pb
from runtime.proto import head_pb2_grpc as pb_grpc
from runtime.scheduler import DONE_STATES, INFEASIBLE, InvalidRequest, Item, Scheduler, validate_request

log = logging.getLogger("launch.runtime.head")

ALIVE, DEAD = "alive", "dead"
# A blocking `get` holds one server thread while it waits (asleep on its own event): enough threads that
# a thousand waiting clients never leave heartbeats, reports or ClusterState without one.
SERVER_THREADS = 2048
WAIT_CHECK_S = 2.0  # how often a waiting GetResults looks whether its client went away


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
    outbox: queue.Queue = field(default_factory=queue.Queue)  # Assignments for its WorkStream


class HeadServicer(pb_grpc.HeadServicer):
    def __init__(self, heartbeat_interval_s: float, node_timeout_s: float, clock=time.time,
                 node_types: dict[str, dict[str, float]] | None = None, log_dir: Path | None = None):
        self.heartbeat_interval_s = heartbeat_interval_s
        self.node_timeout_s = node_timeout_s
        self.clock = clock
        self.nodes: dict[str, NodeRecord] = {}
        self.sched = Scheduler(node_types)
        self.lock = threading.RLock()  # guards nodes, sched and waiters
        self.waiters: dict[str, set[threading.Event]] = {}  # item id -> the GetResults calls waiting for it
        self.log_dir = log_dir or (runtime_dir() / "job-logs")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.log_dir, 0o700)  # jobs' output is the cluster user's only

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
            self.nodes[request.node_id] = rec
            lost = self.sched.add_node(request.node_id, request.node_type, total, request.is_head, now,
                                       list(request.gpu_ids))
            self._dispatch(now)
            self._wake()
        if lost:
            log.warning("node %s registered again: %d item(s) it ran were requeued", request.node_id, len(lost))
        log.info("node %s (%s) registered from %s: %s", request.node_id, request.node_type, request.address, total)
        return pb.RegisterNodeReply(heartbeat_interval_s=self.heartbeat_interval_s, drop_running=old is not None)

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
        """Nodes silent for longer than the timeout are dead: their work goes back to the queue."""
        now = self.clock()
        newly = []
        with self.lock:
            for r in self.nodes.values():
                if r.state == ALIVE and now - r.last_heartbeat > self.node_timeout_s:
                    newly.append(r.node_id)
                    self._declare_dead(r, now, f"missed heartbeats for {self.node_timeout_s:.0f}s")
            if newly:
                self._dispatch(now)
                self._wake()
        return newly

    def RemoveNode(self, request, context):
        now = self.clock()
        with self.lock:
            r = self.nodes.get(request.node_id)
            if r is None or r.state != ALIVE:
                return pb.RemoveNodeReply(known=r is not None, requeued=0)
            requeued = self._declare_dead(r, now, f"removed ({request.reason or 'terminated'})", expected=True)
            self._dispatch(now)
            self._wake()
        return pb.RemoveNodeReply(known=True, requeued=requeued)

    def Drain(self, request, context):
        with self.lock:
            drained, running = self.sched.drain(request.node_id, undrain=request.undrain)
            if request.undrain:
                self._dispatch(self.clock())
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
                    idle_since=n.idle_since if n else 0.0,
                    draining=bool(n and n.draining), running=len(n.running) if n else 0,
                ))
            demand = [pb.ShapeDemand(shape=pb.Resources(amounts=dict(s)), count=c) for s, c in self.sched.demand()]
            infeasible = [pb.InfeasibleDemand(shape=pb.Resources(amounts=dict(s)), count=c, reason=why)
                          for s, c, why in self.sched.infeasible_demand()]
        return pb.ClusterState(nodes=nodes, now=self.clock(), demand=demand, infeasible=infeasible)

    # --- work ---------------------------------------------------------------------------------------

    def Submit(self, request, context):
        """One or many items; ids are the client's where given (a batch is all or nothing)."""
        specs, given = list(request.specs), list(request.ids)
        if given and len(given) != len(specs):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ids and specs differ in length")
        for spec in specs:
            if spec.kind not in ("task", "job"):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"kind must be task or job, got {spec.kind!r}")
            try:
                validate_request(dict(spec.request.amounts))
            except InvalidRequest as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        now = self.clock()
        with self.lock:
            if any(i in self.sched.items for i in given) or len(set(given)) != len(given):
                context.abort(grpc.StatusCode.ALREADY_EXISTS, "an item id was used twice")
            ids = given or [self.sched.new_id(spec.kind) for spec in specs]
            for item_id, spec in zip(ids, specs):
                item = Item(id=item_id, kind=spec.kind, name=spec.name or spec.kind,
                            request=dict(spec.request.amounts), max_retries=max(spec.max_retries, 0),
                            submitted_at=now, spec=spec, depends_on=set(spec.depends_on))
                self.sched.submit(item, now)
            self._dispatch(now)
            self._wake()
        return pb.SubmitReply(ids=ids)

    def _dispatch(self, now: float) -> None:
        """Schedule, and hand each newly placed item to its node's WorkStream. Caller holds the lock."""
        for item in self.sched.schedule(now):
            deps = {d: self.sched.items[d].result.value for d in item.spec.depends_on}
            self.nodes[item.node_id].outbox.put(pb.Assignment(
                item_id=item.id, spec=item.spec, gpu_ids=item.gpu_ids, dep_values=deps, attempt=item.attempt))

    def WorkStream(self, request, context):
        with self.lock:
            rec = self.nodes.get(request.node_id)
        if rec is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"node {request.node_id} is not registered")
        while context.is_active():
            try:
                yield rec.outbox.get(timeout=0.5)
            except queue.Empty:
                continue

    def Report(self, request, context):
        r = request.result
        now = self.clock()
        with self.lock:
            item = self.sched.complete(r.id, r.state, now, exit_code=r.exit_code, message=r.message, result=r,
                                       node_id=request.node_id)
            if item is not None and item.state == "queued":
                log.warning("item %s lost its process (%s); requeued, attempt %d", r.id, r.message, item.attempt)
            if item is not None:
                self._dispatch(now)
                self._wake()
        return pb.ReportReply()

    def _result(self, item: Item) -> pb.ItemResult:
        res = pb.ItemResult(id=item.id, state=item.state, message=item.message, exit_code=item.exit_code,
                            node_id=item.node_id)
        if item.result is not None:
            res.value, res.error = item.result.value, item.result.error
        return res

    def _wake(self) -> None:
        """(under self.lock) Wake the GetResults calls waiting for an item that is done now, only those."""
        for item_id in self.sched.take_finished():
            for waiter in self.waiters.pop(item_id, ()):
                waiter.set()

    def GetResults(self, request, context):
        """Waits on an event set when one of its items is done: no re-scan of the others' items, no
        polling; a check every few seconds only notices a client that went away."""
        ids = list(request.ids)
        want = request.num_returns or len(ids)
        deadline = None if request.timeout_s < 0 else time.monotonic() + request.timeout_s
        event = threading.Event()
        with self.lock:
            unknown = [i for i in ids if i not in self.sched.items]
            if unknown:
                context.abort(grpc.StatusCode.NOT_FOUND, f"unknown id {unknown[0]}")
        try:
            while True:
                with self.lock:
                    done = [self.sched.items[i] for i in ids if self.sched.items[i].state in DONE_STATES]
                    left = None if deadline is None else deadline - time.monotonic()
                    if len(done) >= want or (left is not None and left <= 0) or not context.is_active():
                        return self._results_reply(done)
                    event.clear()
                    for i in ids:
                        if self.sched.items[i].state not in DONE_STATES:
                            self.waiters.setdefault(i, set()).add(event)
                event.wait(timeout=WAIT_CHECK_S if left is None else min(left, WAIT_CHECK_S))
        finally:
            with self.lock:
                for i in ids:
                    waiting = self.waiters.get(i)
                    if waiting is not None:
                        waiting.discard(event)
                        if not waiting:
                            del self.waiters[i]

    def _results_reply(self, done: list[Item]) -> pb.GetResultsReply:
        """As many results as fit MAX_REPLY_BYTES (at least one); the client asks again for the rest."""
        results, size = [], 0
        for item in done:
            r = self._result(item)
            n = r.ByteSize()
            if results and size + n > MAX_REPLY_BYTES:
                return pb.GetResultsReply(results=results, truncated=True)
            results.append(r)
            size += n
        return pb.GetResultsReply(results=results)

    def Cancel(self, request, context):
        now = self.clock()
        with self.lock:
            try:
                state, node_id = self.sched.cancel(request.id, now)
            except KeyError:
                context.abort(grpc.StatusCode.NOT_FOUND, f"unknown id {request.id}")
            if node_id and node_id in self.nodes:
                self.nodes[node_id].outbox.put(pb.Assignment(item_id=request.id, cancel=True))
            self._wake()
        return pb.CancelReply(state=state)

    def ListItems(self, request, context):
        with self.lock:
            items = [i for i in self.sched.items.values() if not request.kind or i.kind == request.kind]
            infos = [pb.ItemInfo(id=i.id, kind=i.kind, name=i.name, state=i.state, node_id=i.node_id,
                                 request=pb.Resources(amounts=i.request), submitted_at=i.submitted_at,
                                 started_at=i.started_at, finished_at=i.finished_at, exit_code=i.exit_code,
                                 message=i.message, attempt=i.attempt) for i in items]
        return pb.ListItemsReply(items=infos)

    # --- job logs: shipped by the agent, kept by the head ------------------------------------------

    def _log_path(self, item_id: str) -> Path:
        return self.log_dir / f"{item_id}.log"

    def AppendLog(self, request, context):
        if request.item_id not in self.sched.items:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown id {request.item_id}")
        with os.fdopen(os.open(self._log_path(request.item_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
                       "ab") as f:
            f.write(request.data)
        return pb.AppendLogReply()

    def JobLogs(self, request, context):
        item = self.sched.items.get(request.id)
        if item is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown job {request.id}")
        done = item.state in DONE_STATES or item.state == INFEASIBLE
        try:
            with open(self._log_path(request.id), "rb") as f:
                f.seek(request.offset)
                data = f.read(1 << 20)
        except FileNotFoundError:
            data = b""
        # done only once everything was read: the agent ships the log tail before it reports
        return pb.JobLogsReply(data=data, offset=request.offset + len(data), done=done and len(data) < (1 << 20))


def bind_hosts(cfg: NodeRuntimeConfig) -> list[str]:
    """Where the service listens: loopback (the launcher's SSH port forward and the node's own
    processes reach it there) and the address its agents use; never every interface unless asked."""
    if cfg.bind_host:
        return [cfg.bind_host]
    return ["127.0.0.1"] + ([cfg.address] if cfg.address not in ("127.0.0.1", "localhost", "") else [])


def serve(cfg: NodeRuntimeConfig, log_dir: Path | None = None) -> tuple[grpc.Server, HeadServicer, int]:
    servicer = HeadServicer(cfg.heartbeat_interval_s, cfg.node_timeout_s, node_types=cfg.node_types,
                            log_dir=log_dir)
    # Threads: each agent holds a WorkStream open and each get() may block, so leave plenty.
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=SERVER_THREADS), interceptors=[TokenInterceptor(cfg.token)],
        options=GRPC_OPTIONS,
    )
    pb_grpc.add_HeadServicer_to_server(servicer, server)
    port = cfg.head_port
    for host in bind_hosts(cfg):
        port = server.add_insecure_port(f"{host}:{port}")  # port 0 the first time: the others take the same
        if port == 0:
            raise RuntimeError(f"cannot listen on {host}:{cfg.head_port}")
    server.start()
    return server, servicer, port


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
    while not stop.wait(min(1.0, cfg.node_timeout_s / 4)):
        servicer.mark_dead_nodes()
    addr_file.unlink(missing_ok=True)
    server.stop(grace=2).wait()
    log.info("head service stopped")


if __name__ == "__main__":
    main()
