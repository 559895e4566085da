"""The autoscaler's loop on the head node: observe -> plan -> act, once per tick.

- observe: the provider's nodes (by cluster tag) and the runtime's ClusterState (nodes, demand);
- plan: autoscaler.planner.plan, a pure function;
- act: through the lifecycle (the same code `up` runs): drain, undrain, terminate; create nodes
  (tagged at birth with a launch request id) and set them up in background threads, so a slow
  bootstrap never blocks the tick.

Crash-safe by construction: all state is in instance tags and the runtime. A restarted monitor sees
launching nodes as capacity (no duplicate launch), adopts nodes whose set-up was interrupted (nobody is
setting them up any more), and the planner terminates nodes stuck in a status past the launch timeout
or unknown to the runtime past a grace period (no leak). Any failure to create or set up nodes of a type
(capacity, quota, a bad image, a missing permission, a setup command that fails) backs that type off
with a growing delay, and the planner keeps serving the other types. Events go to
~/.launch-runtime/nodes/<hostname>/logs/autoscaler.log (JSON lines, followed by `launch monitor`), the last plan to
autoscaler-status.json (shown by `launch status`), and Prometheus metrics are served on the head.
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
from concurrent.futures import Future, ThreadPoolExecutor

from autoscaler.planner import GroupDemand, Limits, NodeTypeSpec, NodeView, Plan, PlanInput, fmt_shape, plan, shape_of
from autoscaler.pricing import cost_per_hour
from core.backoff import Backoff
from core.errors import LaunchError
from core.files import atomic_write, open_private, private_dir
from core.node import NodeInfo
from core.paths import (
    HEAD_ADDRESS, LOGS, METRICS_ADDRESS, MONITOR_STATUS, on_this_node,
)
from core.spec import ClusterSpec
from core.status import SETTING_UP, InvalidTransition, NodeStatus
from core.tags import KIND_HEAD, TAG_LAUNCH_HASH
from lifecycle.cluster import Lifecycle
from lifecycle.hashing import launch_hash
from lifecycle.on_head import head_state
from lifecycle.state import ClusterDir
from runtime.client import HeadClient
from runtime.node import single_instance
from runtime.node_config import NodeRuntimeConfig

log = logging.getLogger("launch.autoscaler")


class Monitor:
    def __init__(self, spec: ClusterSpec, state: ClusterDir, token: str, head_address: str, bind_host: str,
                 clock=time.time):
        self.clock = clock
        self.spec = spec
        self.cfg = spec.config
        self.name = spec.name
        self.lifecycle = Lifecycle(spec, state)
        self.token = token
        self.bind_host = bind_host
        self.head_address = head_address
        self.head = HeadClient(head_address, token, timeout_s=10)
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="bootstrap")
        self.bootstrapping: dict[str, Future] = {}
        self.backoff: dict[str, Backoff] = {}  # node type -> its failures and when it may be tried again
        self.lost_since: dict[str, float] = {}
        self.learned: dict[str, dict[str, float]] = {}  # node type -> resources its nodes registered with
        self.recent: deque[dict] = deque(maxlen=30)
        self.lock = threading.Lock()
        self.events = open_private(private_dir(on_this_node(LOGS)) / "autoscaler.log", "a", buffering=1)
        self.metrics = _Metrics()

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
            if n.state == "alive" and n.node_type in self.cfg.available_node_types:
                self.learned.setdefault(n.node_type, dict(n.total.amounts))
        out = {}
        for name, nt in self.cfg.available_node_types.items():
            resources = self.spec.resources_of(name)
            if not resources or ("CPU" not in resources and name in self.learned):
                resources = {**self.learned.get(name, {}), **resources}
            out[name] = NodeTypeSpec(name=name, resources=resources, min_workers=nt.min_workers,
                                     max_workers=self.cfg.worker_max(name),
                                     cost_per_hour=cost_per_hour(self.cfg, name, resources), spot=nt.spot,
                                     idle_timeout_s=nt.idle_timeout_s, priority=nt.priority)
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
                id=n.id, node_type=n.node_type, status=n.status, is_head=n.kind == KIND_HEAD,
                registered=r is not None,
                total=dict(r.total.amounts) if r else {}, available=dict(r.available.amounts) if r else {},
                running=r.running if r else 0, idle_since=r.idle_since if r else 0.0,
                launched_at=n.launched_at, status_since=n.status_since, draining=bool(r and r.draining),
                outdated=outdated, lost_for=lost_for,
            ))
        return out

    # --- one tick -----------------------------------------------------------------------------------

    def tick(self) -> Plan:
        now = self.clock()
        phases: dict[str, float] = {}
        t0 = time.monotonic()
        nodes = self.lifecycle.nodes()
        phases["list"] = time.monotonic() - t0
        state = self.head.cluster_state()
        phases["cluster_state"] = time.monotonic() - t0 - phases["list"]
        a = self.cfg.autoscaler
        limits = Limits(
            max_workers=self.cfg.max_workers, upscaling_speed=self.cfg.upscaling_speed,
            idle_timeout_s=self.cfg.idle_timeout_minutes * 60, max_cost_per_hour=self.cfg.max_cost_per_hour,
            launch_timeout_s=a.launch_timeout_minutes * 60, runtime_grace_s=a.runtime_grace_s,
        )
        types = self.node_types(state)
        demand = [(dict(d.shape.amounts), d.count) for d in state.demand]
        backoff = {t: b.until for t, b in self.backoff.items()}
        self.drain_vanished(nodes, state)
        views = self.views(nodes, state, now)
        groups = [GroupDemand(tuple(shape_of(dict(b.amounts)) for b in g.bundles), g.strategy, g.count)
                  for g in state.groups]
        result = plan(PlanInput(types, views, demand, limits, backoff, now, groups))
        t1 = time.monotonic()
        self.act(result, {n.id: n for n in nodes}, {v.id: v for v in views}, now)
        self.adopt(nodes, {i for i, _ in result.terminations})
        phases["act"] = time.monotonic() - t1
        self.report(result, nodes, types, demand, state, now, groups)
        took = time.monotonic() - t0
        if took > max(5.0, 5 * self.cfg.autoscaler.tick_s):  # a slow cloud API or head: say where
            self.event("tick-slow", took_s=round(took, 2), phases={k: round(v, 2) for k, v in phases.items()})
        return result

    def drain_vanished(self, nodes: list[NodeInfo], state) -> None:
        """A node the runtime knows whose instance is gone (a spot interruption, a terminate outside
        launch) gets no new work; what it ran is requeued once its heartbeats stop."""
        listed = {n.id for n in nodes}
        for r in state.nodes:
            if r.state == "alive" and not r.is_head and not r.draining and r.node_id not in listed:
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
            node = nodes[node_id]
            if views[node_id].registered:
                # drain first: once the head says it is drained, no work can reach it any more
                reply = self.head.drain(node_id)
                if not reply.drained:
                    # busy after all (work landed since we looked): it stays drained, so it is no
                    # capacity; the planner takes it back if work waits, or retires it once idle
                    self.event("terminate-deferred", node=node_id, reason=f"{reason}; busy with {reply.running}")
                    continue
            # logged first: the node leaves the provider's listing before its processes have all stopped
            view = views[node_id]
            # a healthy node (idle) is retired: stopped where the provider caches stopped nodes
            healthy = view.status in (NodeStatus.UP_TO_DATE, NodeStatus.DRAINING) and not view.outdated
            self.event("terminate", node=node_id, node_type=node.node_type, reason=reason,
                       stopped=healthy and self.lifecycle.caches_stopped_nodes and not node.spot)
            (self.lifecycle.retire if healthy else self.lifecycle.terminate)([node])
            self.metrics.terminations.labels(node.node_type).inc()
            if views[node_id].registered:  # gone now, not when its heartbeats stop (nor "interrupted")
                self.head.remove_node(node_id, reason)

        for node_type, count in sorted(p.launches.items()):
            self.launch(node_type, count, p.launch_reasons.get(node_type, ""), now)

    def launch(self, node_type: str, count: int, reason: str, now: float) -> None:
        request_id = uuid.uuid4().hex[:12]
        try:
            created = self.lifecycle.create(node_type, count, request_id=request_id)
        except Exception as e:  # noqa: BLE001  any failure of one type must not stop the others
            self.back_off(node_type, _describe(e), now)
            return
        self.metrics.launches.labels(node_type).inc(len(created))
        self.event("launch", node_type=node_type, count=len(created), asked=count, request=request_id,
                   reason=reason, nodes=[n.id for n in created])
        for node in created:
            self.bootstrap(node)

    def back_off(self, node_type: str, error: str, now: float) -> None:
        a = self.cfg.autoscaler
        with self.lock:
            b = self.backoff.setdefault(node_type, Backoff(a.backoff_initial_s, a.backoff_max_s))
            delay = b.fail(now, error)
        self.metrics.failures.labels(node_type).inc()
        self.event("launch-failed", node_type=node_type, error=error, backoff_s=delay, failures=b.failures)

    def bootstrap(self, node: NodeInfo) -> None:
        def run():
            try:
                self.lifecycle.set_up_worker(node, self.token, self.head_address)
            except Exception as e:  # noqa: BLE001  a node whose setup fails backs its type off
                self.event("setup-failed", node=node.id, node_type=node.node_type, error=_describe(e))
                self.back_off(node.node_type, f"setup of {node.id} failed: {_describe(e)}", self.clock())
                return
            with self.lock:
                self.backoff.pop(node.node_type, None)  # a node of it came up: the type works
            self.event("node-up", node=node.id, node_type=node.node_type)

        self.bootstrapping[node.id] = self.pool.submit(run)

    def adopt(self, nodes: list[NodeInfo], terminated: set[str]) -> None:
        """Nodes half set up that nobody is setting up (a previous monitor died): finish them."""
        for n in nodes:
            if n.kind == KIND_HEAD or n.id in terminated or n.status not in SETTING_UP:
                continue
            future = self.bootstrapping.get(n.id)
            if future is None or future.done():
                self.event("adopt", node=n.id, node_type=n.node_type, status=n.status.value)
                self.bootstrap(n)

    # --- report -------------------------------------------------------------------------------------

    def report(self, p: Plan, nodes: list[NodeInfo], types: dict[str, NodeTypeSpec], demand, state,
               now: float, groups: list[GroupDemand] = ()) -> None:
        with self.lock:
            failures = {t: {"count": b.failures, "backoff_until": b.until, "backoff_s": max(0.0, b.until - now),
                            "last_error": b.last_error} for t, b in self.backoff.items() if b.active(now)}
        # what the planner found infeasible among queued work; `launch status` shows the runtime's own
        # infeasible items beside it, so they are counted in the metric only
        infeasible = [{"shape": fmt_shape(s), "count": c, "reason": r} for s, c, r in p.infeasible]
        held = [{"shape": fmt_shape(shape_of(dict(d.shape.amounts))), "count": d.count} for d in state.infeasible]
        status = {
            "updated_at": now,
            "pending_demand": [{"shape": dict(shape_of(d)), "count": c} for d, c in demand],
            "launches": p.launches,
            "launch_reasons": p.launch_reasons,
            "terminations": [{"node": i, "reason": r} for i, r in p.terminations],
            "drains": [{"node": i, "reason": r} for i, r in p.drains],
            "undrains": [{"node": i, "reason": r} for i, r in p.undrains],
            "infeasible": infeasible,
            "unmet": [{"shape": fmt_shape(s), "count": c, "reason": r} for s, c, r in p.unmet],
            "pending_groups": [{"group": g.describe(), "count": g.count} for g in groups],
            "infeasible_groups": [{"group": d, "count": c, "reason": r} for d, c, r in p.infeasible_groups],
            "unmet_groups": [{"group": d, "count": c, "reason": r} for d, c, r in p.unmet_groups],
            "failures": failures,
            "cost_per_hour": round(sum(types[n.node_type].cost_per_hour for n in nodes if n.node_type in types), 4),
            "nodes": _count_nodes(nodes),
            "recent_events": list(self.recent)[-10:],
        }
        if p.launches or p.terminations or p.drains or p.undrains:
            self.event("plan", launches=p.launches, terminations=len(p.terminations), drains=len(p.drains),
                       undrains=len(p.undrains))
        self.metrics.update(status, held)
        atomic_write(on_this_node(MONITOR_STATUS), json.dumps(status, indent=1, sort_keys=True), mode=0o644)

    # --- loop ---------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        address = self.metrics.serve(self.bind_host or "127.0.0.1", self.cfg.autoscaler.metrics_port)
        on_this_node(METRICS_ADDRESS).write_text(address)
        self.event("monitor-started", tick_s=self.cfg.autoscaler.tick_s)
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.tick()
            except Exception as e:  # a tick that fails (head busy, provider hiccup) is retried next tick
                log.exception("tick failed")
                self.event("tick-failed", error=_describe(e)[:500])
            stop.wait(max(0.0, self.cfg.autoscaler.tick_s - (time.monotonic() - started)))
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.event("monitor-stopped")


def _describe(e: BaseException) -> str:
    return str(e) if isinstance(e, LaunchError) else f"{type(e).__name__}: {e}"


def _count_nodes(nodes: list[NodeInfo]) -> list[dict]:
    counts: dict[tuple[str, str], int] = {}
    for n in nodes:
        key = (n.node_type, n.status.value)
        counts[key] = counts.get(key, 0) + 1
    return [{"node_type": t, "status": s, "count": c} for (t, s), c in sorted(counts.items())]


class _Metrics:
    """Prometheus metrics of the autoscaler (prometheus_client, with its process metrics)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge
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
    spec, state = head_state()  # the head's own: spec, key, mounts, setup logs, pinned host keys
    node_cfg = NodeRuntimeConfig.load()
    monitor = Monitor(spec, state, node_cfg.token, on_this_node(HEAD_ADDRESS).read_text().strip(), node_cfg.bind_host)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    monitor.run(stop)
    os._exit(0)  # bootstrap threads still running are abandoned: a next monitor adopts their nodes


if __name__ == "__main__":
    main()
