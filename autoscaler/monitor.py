"""The autoscaler's loop on the head node, the cluster's one reconciler: observe -> plan -> act, each tick.

- observe: the provider's nodes (by cluster tag), the runtime's ClusterState (nodes, demand), and the
  spec `up` shipped (read again when it changed: a new generation, a new round); a tick comes every
  tick_s, and at once when the head says work stopped fitting (its WatchDemand long poll);
- plan: autoscaler.planner.plan, a pure function (min_workers included; a static cluster, autoscaler:
  false, plans with no demand);
- act: through the lifecycle: drain, undrain, terminate; ask for nodes (a launch is a request: `create`
  runs on a thread, tagged at birth with the request id, and its answer, nodes or a typed error, is
  seen the next tick), set up new nodes and check every other worker once per round, in background
  threads, so neither a slow cloud call nor a slow bootstrap blocks the tick;
- report: the plan, failures and the round (what was done for `up`'s generation, what it waits for,
  whether it converged) in autoscaler-status.json, which `up` and `launch status` read.

Crash-safe by construction: all state is in instance tags and the runtime. A restarted monitor sees
launching nodes as capacity (no duplicate launch), adopts nodes whose set-up was interrupted (nobody is
setting them up any more), and the planner terminates nodes stuck in a status past the launch timeout
or unknown to the runtime past a grace period (no leak). Any failure to create or set up nodes of a type
(capacity, quota, a bad image, a missing permission, a setup command that fails) backs that type off
with a growing delay, and the planner keeps serving the other types. `launch down` has it remove every
worker and stop (runtime.node stop-monitor --down). Events go to
~/.launch-runtime/nodes/<hostname>/logs/autoscaler.log (JSON lines, followed by `launch monitor`), and
Prometheus metrics are served on the head.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from autoscaler.planner import GroupDemand, NodeTypeSpec, NodeView, Plan, PlanInput, fmt_shape, limits_of, plan, shape_of
from autoscaler.live_prices import LivePrices
from autoscaler.pricing import LivePrice, node_type_spec, quote
from autoscaler.demand_watch import DemandWatch, demand_counts
from autoscaler import dashboard
from autoscaler.denials import Denials
from autoscaler.history import CostHistory, rotate_events
from autoscaler.upkeep import WorkerUpkeep, _describe
from core.backoff import Backoff
from core.errors import PermissionDenied
from core.files import atomic_write, open_private, private_dir
from core.node import NodeInfo
from core.paths import COST_HISTORY, HEAD_ADDRESS, LOGS, METRICS_ADDRESS, MONITOR_DOWN, MONITOR_STATUS, on_this_node
from core.status import SETTING_UP, InvalidTransition, NodeStatus
from core.tags import KIND_HEAD, TAG_LAUNCH_HASH, TAG_REQUEST_ID
from lifecycle.cluster import REGISTER_TIMEOUT_S, Lifecycle
from lifecycle.hashing import launch_hash
from lifecycle.on_head import head_state, read_head_spec
from lifecycle.reconciler import Round
from lifecycle.updater import NodeUpdateFailed
from runtime.client import HeadClient
from runtime.node import single_instance
from runtime.node_config import NodeRuntimeConfig
from runtime.work import own_resources, pinned_node

log = logging.getLogger("launch.autoscaler")
ROUND_TICK_S = 1.0  # how often the monitor ticks while `up` waits for it to converge
TICKS_KEPT = 500  # the ticks whose durations `launch status --json` summarises
DENIED_TICK_MAX_S = 30.0  # the longest wait between ticks the cloud refuses (a missing permission)
DOWN_CREATE_WAIT_S = 300.0  # `down` waits this long for launches already asked of the provider
SETUP_FANOUT = 64  # nodes set up at once (each a thread: SSH, shipping the runtime, starting it)


@dataclass
class _Round:
    """One generation of the spec as the monitor works on it: the workers checked in it, what was done,
    what failed. Closed once it converges: what happens later is the autoscaler's ordinary business."""

    generation: int
    checked: set[str] = field(default_factory=set)
    actions: list[str] = field(default_factory=list)
    failures: dict[str, dict] = field(default_factory=dict)  # node id -> NodeUpdateFailed.as_dict()
    errors: dict[str, str] = field(default_factory=dict)  # node type -> why it could not be launched
    waiting: list[str] = field(default_factory=list)
    short: list[str] = field(default_factory=list)  # node types below their min_workers
    converged: bool = False

    def did(self, action: str) -> None:
        if not self.converged:
            self.actions.append(action)

    def report(self) -> Round:
        return Round(self.generation, self.converged, list(self.waiting), list(self.actions),
                     list(self.failures.values()), [self.errors[t] for t in self.short if t in self.errors])


@dataclass
class _Request:
    """A launch asked of the provider and not yet answered: `create` runs on a thread of its own, so a
    slow cloud call (GCP operations, Azure pollers, a Slurm queue) never holds the loop. Until its answer
    is seen (the next tick), its nodes count as launching."""

    node_type: str
    count: int
    reason: str
    asked_at: float
    future: Future

    def unlisted(self, nodes: list[NodeInfo], request_id: str) -> int:
        """How many of its nodes the provider does not list yet (a cloud may list them before answering)."""
        return max(0, self.count - sum(1 for n in nodes if n.tags.get(TAG_REQUEST_ID) == request_id))


REQUESTED = "requested:"  # the id prefix of a node a launch request has not yet made


class Monitor(WorkerUpkeep, DemandWatch, Denials, LivePrices):
    def __init__(self, token: str, bind_host: str, clock=time.time):
        self.clock = clock
        self.token = token
        self.bind_host = bind_host
        self.spec_text = ""
        self.retired: list[Lifecycle] = []  # replaced by a new spec's: closed once nothing uses them
        self.head_address = ""
        self.head: HeadClient | None = None
        self.pool = ThreadPoolExecutor(max_workers=SETUP_FANOUT, thread_name_prefix="bootstrap")
        self.bootstrapping: dict[str, Future] = {}
        self.requests: dict[str, _Request] = {}  # request id -> a launch on its way
        self.removing: dict[str, Future] = {}  # node id -> its removal on its way (see remove)
        self.creating = ThreadPoolExecutor(max_workers=8, thread_name_prefix="create")
        self.backoff: dict[str, Backoff] = {}  # node type -> its failures and when it may be tried again
        self.lost_since: dict[str, float] = {}
        self.learned: dict[str, dict[str, float]] = {}  # node type -> resources its nodes registered with
        self.mounts_checked = 0.0
        self.recent: deque[dict] = deque(maxlen=30)
        self.lock = threading.Lock()
        self.wake = threading.Event()  # set: tick now (run() takes the one its signal handlers set)
        self.planned_for: dict = {}  # the demand the last tick saw (_demand_counts): more wakes the loop
        self.live_prices: dict[str, LivePrice] = {}  # machine type -> the cloud's spot price (refresh_prices)
        self.prices_asked = 0.0
        self.prices: dict[str, dict] = {}  # node type -> its price and where it comes from, as last planned
        self.noticed: dict[str, float] = {}  # node -> when its preemption notice was logged
        self.denied: dict[str, dict] = {}  # where -> what the cloud refused the head's identity (Denials)
        self.events_path = private_dir(on_this_node(LOGS)) / "autoscaler.log"
        self.events = open_private(self.events_path, "a", buffering=1)
        self.history = CostHistory(on_this_node(COST_HISTORY))
        self.metrics = _Metrics()
        self.reload()

    def reload(self) -> None:
        """The spec `up` shipped, read again when it changed: a new generation, a new round."""
        text = read_head_spec()
        if text == self.spec_text:
            return
        spec, state = head_state(text)
        if self.spec_text:
            self.retired.append(self.lifecycle)
        self.spec_text, self.spec, self.cfg, self.name = text, spec, spec.config, spec.name
        self.lifecycle = Lifecycle(spec, state)
        self.static = not self.cfg.autoscaler.enabled
        address = on_this_node(HEAD_ADDRESS).read_text().strip()
        if address != self.head_address:  # the head's runtime restarted elsewhere
            if self.head is not None:
                self.head.close()
            self.head_address, self.head = address, HeadClient(address, self.token, timeout_s=10)
        self.round = _Round(spec.generation)
        self.event("spec", generation=spec.generation, static=self.static)

    # --- events -------------------------------------------------------------------------------------

    def event(self, kind: str, **fields) -> None:
        record = {"ts": round(self.clock(), 3), "event": kind, **fields}
        with self.lock:
            self.recent.append(record)
            try:
                self.events.write(json.dumps(record, sort_keys=True) + "\n")
            except OSError:  # a full disk: the event is lost from the log, and the loop goes on
                pass

    # --- observe ------------------------------------------------------------------------------------

    def node_types(self, state) -> dict[str, NodeTypeSpec]:
        """The spec's resources (declared or from the catalog), else what a node of the type registered with."""
        for n in state.nodes:
            if n.state == "alive" and n.node_type in self.cfg.available_node_types:  # (not its "node:<id>")
                self.learned.setdefault(n.node_type, own_resources(n.total.amounts))
        out = {}
        for name in self.cfg.available_node_types:
            resources = self.spec.resources_of(name)
            if not resources or ("CPU" not in resources and name in self.learned):
                resources = {**self.learned.get(name, {}), **resources}
            price = quote(self.cfg, name, resources, self.live_prices, self.clock())
            self.prices[name] = {"per_hour": price.per_hour, "source": price.source}
            out[name] = node_type_spec(self.cfg, name, resources, price.per_hour)
        return out

    def views(self, nodes: list[NodeInfo], state, now: float) -> list[NodeView]:
        runtime = {n.node_id: n for n in state.nodes if n.state == "alive"}
        out = []
        for n in nodes:
            r = runtime.get(n.id)
            if n.status == NodeStatus.UP_TO_DATE and r is None:
                lost_for = now - self.lost_since.setdefault(n.id, now)
            else:
                self.lost_since.pop(n.id, None)
                lost_for = 0.0
            outdated = (n.node_type in self.cfg.available_node_types
                        and n.tags.get(TAG_LAUNCH_HASH) != launch_hash(self.cfg, n.node_type))
            out.append(NodeView(
                id=n.id, node_type=n.node_type, status=NodeStatus.TERMINATING if self.leaving(n.id) else n.status,
                is_head=n.kind == KIND_HEAD,
                registered=r is not None,
                total=dict(r.total.amounts) if r else {}, available=dict(r.available.amounts) if r else {},
                running=r.running if r else 0, idle_since=r.idle_since if r else 0.0,
                launched_at=n.launched_at, status_since=n.status_since, draining=bool(r and r.draining),
                outdated=outdated, lost_for=lost_for, preempting=bool(r and r.preempt_at),
            ))
            if r and r.preempt_at and n.id not in self.noticed:  # (its replacement is planned from its work)
                self.noticed[n.id] = now
                self.lifecycle.provider.avoid(n)  # its offering is short of spot capacity: launch elsewhere
                self.event("preempt-notice", node=n.id, node_type=n.node_type, reason=r.preempt_reason,
                           in_s=round(r.preempt_at - now, 1), drained=r.draining, running=r.running)
        for gone in set(self.noticed) - {n.id for n in nodes}:  # the cloud took it (or it was removed)
            self.event("preempted-node-gone", node=gone, after_notice_s=round(now - self.noticed.pop(gone), 1))
        for request_id, r in self.requests.items():
            out += [NodeView(id=f"{REQUESTED}{request_id}:{i}", node_type=r.node_type, status=NodeStatus.PENDING,
                             launched_at=r.asked_at) for i in range(r.unlisted(nodes, request_id))]
        return out

    # --- one tick -----------------------------------------------------------------------------------

    def tick(self) -> Plan:
        self.reload()
        now = self.clock()
        self.answered(now)
        self.removing = {i: f for i, f in self.removing.items() if not f.done()}  # (those listed no more too)
        phases: dict[str, float] = {}
        t0 = time.monotonic()
        nodes = self.lifecycle.nodes()
        phases["list"] = time.monotonic() - t0
        state = self.head.cluster_state()
        phases["cluster_state"] = time.monotonic() - t0 - phases["list"]
        limits = limits_of(self.cfg)
        self.refresh_prices(now)
        types = self.node_types(state)
        # a static cluster (autoscaler: false) is kept at min_workers: the planner sees no demand
        # (work pinned to a node waits for that node: no node launched can run it)
        demand = [] if self.static else [(dict(d.shape.amounts), d.count) for d in state.demand
                                         if pinned_node(d.shape.amounts) is None]
        self.planned_for = demand_counts(state)
        backoff = {t: b.until for t, b in self.backoff.items()}
        self.drain_vanished(nodes, state)
        views = self.views(nodes, state, now)
        groups = [] if self.static else [GroupDemand(tuple(shape_of(dict(b.amounts)) for b in g.bundles), g.strategy,
                                                     g.count) for g in state.groups]
        result = plan(PlanInput(types, views, demand, limits, backoff, now, groups))
        t1 = time.monotonic()
        phases["plan"] = t1 - t0 - phases["list"] - phases["cluster_state"]
        self.act(result, {n.id: n for n in nodes}, {v.id: v for v in views}, now)
        self.tend(nodes, result)
        self.sync_mounts(nodes, result, now)
        self.converge(nodes, {v.id: v for v in views}, result, types, now)
        self.close_retired()
        phases["act"] = time.monotonic() - t1
        self.report(result, nodes, types, demand, state, now, groups)
        took = time.monotonic() - t0
        phases["report"] = took - (t1 - t0) - phases["act"]
        self.metrics.ticked(took, phases)
        if took > max(5.0, 5 * self.cfg.autoscaler.tick_s):  # a slow cloud API or head: say where
            self.event("tick-slow", took_s=round(took, 2), phases={k: round(v, 2) for k, v in phases.items()})
        return result

    def drain_vanished(self, nodes: list[NodeInfo], state) -> None:
        """A node the runtime knows whose instance is gone (a spot interruption, a terminate outside
        launch) gets no new work; what it ran is requeued once its heartbeats stop, or at once for a node
        whose cloud gave notice (it is gone for good)."""
        listed = {n.id for n in nodes}
        for r in state.nodes:
            if r.state == "alive" and r.preempt_at and r.node_id not in listed:  # taken after its notice: its
                self.head.remove_node(r.node_id, "preempted: its instance is gone")  # work runs again now
            elif r.state == "alive" and not r.is_head and not r.draining and r.node_id not in listed:
                self.head.drain(r.node_id)
                self.event("instance-gone", node=r.node_id, node_type=r.node_type,
                           reason="its instance is no longer listed by the provider (interrupted?): drained")

    # --- act ----------------------------------------------------------------------------------------

    def act(self, p: Plan, nodes: dict[str, NodeInfo], views: dict[str, NodeView], now: float) -> None:
        for node_id, reason in p.undrains:
            self.head.drain(node_id, undrain=True)
            self.event("undrain", node=node_id, reason=reason)

        for node_id, reason in p.drains:
            self.head.drain(node_id)
            try:
                self.lifecycle.set_status(nodes[node_id], NodeStatus.DRAINING)
            except InvalidTransition as e:  # e.g. a failed node: drained in the runtime, its status kept
                self.event("status-kept", node=node_id, reason=str(e))
            self.event("drain", node=node_id, reason=reason)

        for node_id, reason in p.terminations:
            if node_id.startswith(REQUESTED):  # not made yet: a launch is not called off, its nodes are seen next
                continue
            node = nodes[node_id]
            if views[node_id].registered:
                # drain first: once the head says it is drained, no work can reach it any more
                reply = self.head.drain(node_id)
                if not reply.drained:
                    # busy after all (work landed since we looked): it stays drained, so it is no
                    # capacity; the planner takes it back if work waits, or retires it once idle
                    self.event("terminate-deferred", node=node_id, reason=f"{reason}; busy with {reply.running}")
                    continue
                # drained and idle: out of the cluster now (nothing of it can be lost), not once its instance
                # has stopped (an SSH host's runtime takes a moment to stop); its agent is not taken back
                self.head.remove_node(node_id, reason)
            # logged first: the node leaves the provider's listing before its processes have all stopped
            view = views[node_id]
            # a healthy node (idle) is retired: stopped where the provider caches stopped nodes
            healthy = view.status in (NodeStatus.UP_TO_DATE, NodeStatus.DRAINING) and not view.outdated
            self.event("terminate", node=node_id, node_type=node.node_type, reason=reason,
                       stopped=healthy and self.lifecycle.caches_stopped_nodes and not node.spot)
            self.remove(node, healthy)
            self.round.did(f"worker {node_id}: terminated ({reason})")
            self.metrics.terminations.labels(node.node_type).inc()

        for node_type, count in sorted(p.launches.items()):
            self.launch(node_type, count, p.launch_reasons.get(node_type, ""), now)

    def launch(self, node_type: str, count: int, reason: str, now: float) -> None:
        """Ask the provider for nodes; returns at once. What came of it is seen by `answered`."""
        request_id = uuid.uuid4().hex[:12]
        future = self.creating.submit(self.lifecycle.create, node_type, count, request_id=request_id)
        future.add_done_callback(lambda _: self.wake.set())  # its nodes are set up at the next tick, now
        self.requests[request_id] = _Request(node_type, count, reason, now, future)

    def answered(self, now: float) -> None:
        """Launch requests the provider answered: their nodes are set up, a failure backs the type off."""
        for request_id, r in list(self.requests.items()):
            if not r.future.done():
                continue
            del self.requests[request_id]
            try:
                created = r.future.result()
            except Exception as e:  # noqa: BLE001  any failure of one type must not stop the others
                delay = self.back_off(r.node_type, _describe(e), now)
                if isinstance(e, PermissionDenied):
                    self.deny(f"launching {r.node_type}", e, delay)
                self.round.errors[r.node_type] = f"could not launch worker(s) of type {r.node_type}: {_describe(e)}"
                continue
            self.allow(f"launching {r.node_type}")
            self.round.errors.pop(r.node_type, None)
            self.round.did(f"{len(created)} worker(s) of type {r.node_type}: created")
            self.metrics.launches.labels(r.node_type).inc(len(created))
            self.event("launch", node_type=r.node_type, count=len(created), asked=r.count, request=request_id,
                       reason=r.reason, nodes=[n.id for n in created], took_s=round(now - r.asked_at, 2))
            for node in created:
                self.bootstrap(node)

    def back_off(self, node_type: str, error: str, now: float) -> float:
        a = self.cfg.autoscaler
        with self.lock:
            b = self.backoff.setdefault(node_type, Backoff(a.backoff_initial_s, a.backoff_max_s))
            delay = b.fail(now, error)
        self.metrics.failures.labels(node_type).inc()
        self.event("launch-failed", node_type=node_type, error=error, backoff_s=delay, failures=b.failures)
        return delay

    def converge(self, nodes: list[NodeInfo], views: dict[str, NodeView], p: Plan,
                 types: dict[str, NodeTypeSpec], now: float) -> None:
        """Whether the round is done: every worker checked in it, set up and registered (or failed), and
        min_workers of each type there (or its launch failed). What it still waits for, said to `up`."""
        rnd = self.round
        if rnd.converged:
            return
        waiting: list[str] = []
        leaving = {i for i, _ in p.terminations}
        have: dict[str, int] = {}  # workers of each type there or on their way (this tick's launches: requests)
        for n in nodes:
            v = views[n.id]
            if (n.kind == KIND_HEAD or n.id in leaving or self.leaving(n.id)
                    or n.status in (NodeStatus.TERMINATING, NodeStatus.DRAINING)):
                continue
            if n.status != NodeStatus.UPDATE_FAILED:
                have[n.node_type] = have.get(n.node_type, 0) + 1
            with self.lock:
                failed = n.id in rnd.failures
            if self.in_flight(n.id) or n.status in SETTING_UP:
                waiting.append(f"worker {n.id}: {n.status.value}")
            elif failed:
                continue
            elif self.to_check(n):
                waiting.append(f"worker {n.id}: to be checked")
            elif v.outdated:
                waiting.append(f"worker {n.id}: outdated, being replaced")
            elif n.status == NodeStatus.UP_TO_DATE and not v.registered:
                if v.lost_for <= REGISTER_TIMEOUT_S:
                    waiting.append(f"worker {n.id}: registering with the head")
                else:
                    with self.lock:
                        rnd.failures[n.id] = NodeUpdateFailed(
                            n.id, "registering", [], f"not registered with the head within {REGISTER_TIMEOUT_S:.0f}s; "
                            f"setup log: {self.lifecycle.dir.node_log(n.id)}").as_dict()
        listed = {n.id for n in nodes}
        waiting += [f"worker {i}: being set up" for i in self.bootstrapping if i not in listed and self.in_flight(i)]
        for request_id, r in self.requests.items():
            have[r.node_type] = have.get(r.node_type, 0) + r.unlisted(nodes, request_id)
            waiting.append(f"{r.node_type}: {r.count} worker(s) being launched")
        short = [t for t, spec in sorted(types.items()) if have.get(t, 0) < spec.min_workers]
        for t in short:
            backed_off = t in self.backoff and self.backoff[t].active(now)
            if t not in rnd.errors and not backed_off:
                waiting.append(f"{t}: {have.get(t, 0)} of {types[t].min_workers} min_workers")
        rnd.waiting, rnd.short, rnd.converged = waiting, short, not waiting
        if rnd.converged:
            self.event("converged", generation=rnd.generation, actions=len(rnd.actions), failures=len(rnd.failures))

    def close_retired(self) -> None:
        """Lifecycles of an older spec, closed once no setup started with them still runs."""
        if self.retired and not any(not f.done() for f in self.bootstrapping.values()):
            for lc in self.retired:
                lc.close()
            self.retired = []
        self.bootstrapping = {i: f for i, f in self.bootstrapping.items() if not f.done()}

    # --- report -------------------------------------------------------------------------------------

    def report(self, p: Plan, nodes: list[NodeInfo], types: dict[str, NodeTypeSpec], demand, state,
               now: float, groups: list[GroupDemand] = ()) -> None:
        with self.lock:
            failures = {t: {"count": b.failures, "backoff_until": b.until, "backoff_s": max(0.0, b.until - now),
                            "last_error": b.last_error} for t, b in self.backoff.items() if b.active(now)}
        held = [{"shape": fmt_shape(shape_of(dict(d.shape.amounts))), "count": d.count} for d in state.infeasible]
        status = {**_plan_status(p, nodes, types, demand, groups), "updated_at": now, "failures": failures,
                  "prices": self.prices, "denied": self.denials_status(), "ticks": self.metrics.tick_stats(),
                  "recent_events": list(self.recent)[-10:]}
        with self.lock:
            status["round"] = self.round.report().as_dict()
        if p.launches or p.terminations or p.drains or p.undrains:
            self.event("plan", launches=p.launches, terminations=len(p.terminations), drains=len(p.drains),
                       undrains=len(p.undrains))
        self.metrics.update(status, held)
        atomic_write(on_this_node(MONITOR_STATUS), json.dumps(status, indent=1, sort_keys=True), mode=0o644)
        self.history.record(now, _fleet(nodes, types))
        if rotate_events(self.events_path):  # (bounded: the dashboard's timeline reads it)
            with self.lock:
                old, self.events = self.events, open_private(self.events_path, "a", buffering=1)
            old.close()

    # --- loop ---------------------------------------------------------------------------------------

    def run(self, stop: threading.Event, wake: threading.Event) -> None:
        """Tick until `stop`; `wake` (set on SIGHUP: `up` shipped a spec) starts the next tick at once."""
        self.wake = wake
        address = self.metrics.serve(self.bind_host or "127.0.0.1", self.cfg.autoscaler.metrics_port)
        on_this_node(METRICS_ADDRESS).write_text(address)
        self.event("monitor-started", tick_s=self.cfg.autoscaler.tick_s)
        threading.Thread(target=self.watch_demand, args=(stop,), name="demand-watch", daemon=True).start()
        refused = Backoff(self.cfg.autoscaler.tick_s, DENIED_TICK_MAX_S)  # ticks the cloud refuses: slower
        while not stop.is_set():
            started = time.monotonic()
            delay = 0.0
            try:
                delay = self.tick_unless_refused(refused)
            except Exception as e:  # a tick that fails (head busy, provider hiccup) is retried next tick
                log.exception("tick failed")
                self.event("tick-failed", error=_describe(e)[:500])
            # while a round has not converged, `up` waits on it: ticks come faster, and a setup that ends wakes one
            tick_s = self.cfg.autoscaler.tick_s
            every = max(delay, tick_s if self.round.converged else min(tick_s, ROUND_TICK_S))
            wake.wait(max(0.0, every - (time.monotonic() - started)))
            wake.clear()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.creating.shutdown(wait=False, cancel_futures=True)
        request = on_this_node(MONITOR_DOWN)
        if request.exists():
            self.remove_workers(request)
        self.event("monitor-stopped")

    def remove_workers(self, request) -> None:
        """`launch down` asked (runtime.node stop-monitor --down): every worker goes, the answer is written
        where the request was."""
        try:
            keep_stopped = bool(json.loads(request.read_text()).get("keep_stopped"))
        except (OSError, ValueError):
            keep_stopped = False
        # launches on their way are answered first: what they make is removed with the rest, not leaked
        wait([r.future for r in self.requests.values()] + list(self.removing.values()), timeout=DOWN_CREATE_WAIT_S)
        try:
            removed = self.lifecycle.terminate_workers(keep_stopped)
            answer = {"removed": removed}
            self.event("down", removed=removed, stopped=keep_stopped)
        except Exception as e:  # noqa: BLE001  said to `down`, which removes them from the laptop then
            answer = {"error": _describe(e)}
            self.event("down-failed", error=_describe(e))
        atomic_write(request, json.dumps(answer))


def _plan_status(p: Plan, nodes: list[NodeInfo], types: dict[str, NodeTypeSpec], demand,
                 groups: list[GroupDemand]) -> dict:
    """A plan as `launch status` shows it, with the demand and the fleet it was made for."""
    return {
        "pending_demand": [{"shape": dict(shape_of(d)), "count": c} for d, c in demand],
        "launches": p.launches,
        "launch_reasons": p.launch_reasons,
        "terminations": [{"node": i, "reason": r} for i, r in p.terminations],
        "drains": [{"node": i, "reason": r} for i, r in p.drains],
        "undrains": [{"node": i, "reason": r} for i, r in p.undrains],
        # what the planner found infeasible among queued work; `launch status` shows the runtime's own
        # infeasible items beside it, so they are counted in the metric only
        "infeasible": [{"shape": fmt_shape(s), "count": c, "reason": r} for s, c, r in p.infeasible],
        "unmet": [{"shape": fmt_shape(s), "count": c, "reason": r} for s, c, r in p.unmet],
        "pending_groups": [{"group": g.describe(), "count": g.count} for g in groups],
        "infeasible_groups": [{"group": d, "count": c, "reason": r} for d, c, r in p.infeasible_groups],
        "unmet_groups": [{"group": d, "count": c, "reason": r} for d, c, r in p.unmet_groups],
        "cost_per_hour": round(sum(types[n.node_type].cost_per_hour for n in nodes if n.node_type in types), 4),
        "nodes": _count_nodes(nodes),
    }


def _fleet(nodes: list[NodeInfo], types: dict[str, NodeTypeSpec]) -> dict[str, dict]:
    """The nodes by type with each type's $/h and market, for the cost history."""
    fleet: dict[str, dict] = {}
    for n in nodes:
        t = types.get(n.node_type)
        entry = fleet.setdefault(n.node_type, {"count": 0, "per_hour": t.cost_per_hour if t else 0.0,
                                               "spot": bool(t and t.spot)})
        entry["count"] += 1
    return fleet


def _count_nodes(nodes: list[NodeInfo]) -> list[dict]:
    counts: dict[tuple[str, str], int] = {}
    for n in nodes:
        key = (n.node_type, n.status.value)
        counts[key] = counts.get(key, 0) + 1
    return [{"node_type": t, "status": s, "count": c} for (t, s), c in sorted(counts.items())]


class _Metrics:
    """Prometheus metrics of the autoscaler (prometheus_client, with its process metrics)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        from prometheus_client.process_collector import ProcessCollector

        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        self.nodes = Gauge("launch_nodes", "Nodes of the cluster by node type and status.", ["node_type", "status"],
                           registry=r)
        self.pending = Gauge("launch_pending_demand", "Queued work that fits no node now, by resource shape.",
                             ["shape"], registry=r)
        self.infeasible = Gauge("launch_infeasible_demand", "Work no node type can run.", ["shape"], registry=r)
        self.cost = Gauge("launch_cost_per_hour", "The fleet's cost in $/h.", registry=r)
        self.launches = Counter("launch_launches", "Nodes launched.", ["node_type"], registry=r)
        self.failures = Counter("launch_failures", "Launch and setup failures, by node type.", ["node_type"], registry=r)
        self.terminations = Counter("launch_terminations", "Nodes terminated.", ["node_type"], registry=r)
        self.tick = Histogram("launch_tick_seconds", "How long the autoscaler's ticks took.", registry=r,
                              buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.recent_ticks: deque[float] = deque(maxlen=TICKS_KEPT)

    def ticked(self, took: float, phases: dict[str, float]) -> None:
        self.tick.observe(took)
        self.recent_ticks.append((took, dict(phases)))

    def tick_stats(self) -> dict:
        """The recent ticks' p50 and p99, and each phase's p99 (list, cluster_state, act), for `launch status
        --json` and the scale bench."""
        if not self.recent_ticks:
            return {}

        def at(values: list[float], q: float) -> float:
            values = sorted(values)
            return round(values[min(len(values) - 1, int(q * len(values)))], 4)

        took = [t for t, _ in self.recent_ticks]
        phases = {k for _, p in self.recent_ticks for k in p}
        return {"count": len(took), "p50_s": at(took, 0.5), "p99_s": at(took, 0.99), "max_s": round(max(took), 4),
                "phase_p99_s": {k: at([p.get(k, 0.0) for _, p in self.recent_ticks], 0.99) for k in sorted(phases)}}

    def update(self, status: dict, held_infeasible: list[dict]) -> None:
        for gauge in (self.nodes, self.pending, self.infeasible):
            gauge.clear()
        for n in status["nodes"]:
            self.nodes.labels(n["node_type"], n["status"]).set(n["count"])
        for d in status["pending_demand"]:
            self.pending.labels(fmt_shape(shape_of(d["shape"]))).set(d["count"])
        totals: dict[str, int] = {}
        for d in [*status["infeasible"], *held_infeasible]:
            totals[d["shape"]] = totals.get(d["shape"], 0) + d["count"]
        for shape, count in totals.items():
            self.infeasible.labels(shape).set(count)
        self.cost.set(status["cost_per_hour"])

    def serve(self, host: str, port: int) -> str:
        from prometheus_client import start_http_server

        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return f"{host}:{server.server_address[1]}"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    single_instance("monitor")
    stop, wake = threading.Event(), threading.Event()
    signal.signal(signal.SIGHUP, lambda *_: wake.set())  # `up` shipped a new spec: read it now
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: (stop.set(), wake.set()))
    on_this_node(MONITOR_DOWN).unlink(missing_ok=True)  # a request a dead monitor left is no one's now
    node_cfg = NodeRuntimeConfig.load()
    # the head's own state: the spec `up` shipped, key, mounts, setup logs, pinned host keys
    monitor = Monitor(node_cfg.token, node_cfg.bind_host)
    dashboard.serve(node_cfg.token, node_cfg.bind_host or "127.0.0.1")
    monitor.run(stop, wake)
    os._exit(0)  # bootstrap threads still running are abandoned: a next monitor adopts their nodes


if __name__ == "__main__":
    main()
