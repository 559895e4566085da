"""The autoscaler's loop on the head node: observe -> plan -> act, once per tick.

- observe: the provider's nodes (by cluster tag) and the runtime's ClusterState (nodes, demand);
- plan: autoscaler.planner.plan, a pure function;
- act: drain, then terminate; create nodes (tagged with a launch request id at birth) and set them up
  in background threads, so a slow bootstrap never blocks the tick.

Crash-safe by construction: all state is in instance tags and the runtime. A restarted monitor sees
launching nodes as capacity (no duplicate launch), adopts nodes whose set-up was interrupted (nobody is
setting them up any more), and the planner terminates nodes stuck past the launch timeout or unknown to
the runtime past a grace period (no leak). Capacity and quota errors back a node type off with a
growing delay; the planner then picks the next type. Events go to ~/.launch-runtime/logs/autoscaler.log
(JSON lines, followed by `launch monitor`), the last plan to autoscaler-status.json (shown by
`launch status`), and Prometheus metrics are served on the head.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import uuid
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from autoscaler.planner import Limits, NodeTypeSpec, NodeView, Plan, PlanInput, fmt_shape, plan, shape_of
from autoscaler.pricing import cost_per_hour
from launcher.bootstrap import NodeUpdateFailed
from launcher.cluster import Cluster
from launcher.config import parse_config
from launcher.errors import LaunchError
from launcher.hashing import launch_hash, mounts_digest
from launcher.node_status import NodeStatus, can_transition
from providers.base import (
    KIND_HEAD, KIND_WORKER, TAG_CLUSTER, TAG_KIND, TAG_LAUNCH_HASH, TAG_NODE_TYPE, TAG_REQUEST_ID, TAG_STATUS,
    CapacityError, NodeInfo, ProviderError, QuotaError,
)
from runtime.client import HeadClient
from runtime.node_config import NodeRuntimeConfig, runtime_dir

log = logging.getLogger("launch.autoscaler")

SETTING_UP = ("pending", "waiting-for-ssh", "syncing-files", "setting-up")


class Monitor:
    def __init__(self, settings: dict, clock=time.time):
        self.clock = clock
        self.cfg = parse_config(settings["config"], base_dir=Path(settings["base_dir"]))
        self.cluster = Cluster(self.cfg, home=Path(settings["launch_home"]))
        self.provider = self.cluster.provider
        self.name = self.cfg.cluster_name
        node_cfg = NodeRuntimeConfig.load()
        self.token = node_cfg.token
        self.bind_host = node_cfg.bind_host
        self.head_address = (runtime_dir() / "head.address").read_text().strip()
        self.head = HeadClient(self.head_address, self.token, timeout_s=10)
        self.mounts = mounts_digest(self.cfg)
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="bootstrap")
        self.bootstrapping: dict[str, Future] = {}
        self.failures: dict[str, dict] = {}  # node type -> {count, backoff_until, last_error}
        self.lost_since: dict[str, float] = {}
        self.counters: dict[str, Counter] = {"launches": Counter(), "failures": Counter(), "terminations": Counter()}
        self.recent: deque[dict] = deque(maxlen=30)
        self.last: dict = {}
        logs = runtime_dir() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.events = open(logs / "autoscaler.log", "a", buffering=1)
        self.lock = threading.Lock()

    # --- events -------------------------------------------------------------------------------------

    def event(self, kind: str, **fields) -> None:
        record = {"ts": round(self.clock(), 3), "event": kind, **fields}
        with self.lock:
            self.events.write(json.dumps(record, sort_keys=True) + "\n")
            self.recent.append(record)

    # --- observe ------------------------------------------------------------------------------------

    def node_types(self, state) -> dict[str, NodeTypeSpec]:
        seen = {n.node_type: dict(n.total.amounts) for n in state.nodes if n.state == "alive"}
        return {
            name: NodeTypeSpec(
                name=name,
                resources=dict(nt.resources) or seen.get(name, {}),
                min_workers=nt.min_workers,
                max_workers=self.cfg.worker_max(name),
                cost_per_hour=cost_per_hour(self.cfg, name),
                spot=nt.spot,
            )
            for name, nt in self.cfg.available_node_types.items()
        }

    def views(self, nodes: list[NodeInfo], state, now: float) -> list[NodeView]:
        runtime = {n.node_id: n for n in state.nodes if n.state == "alive"}
        out = []
        for n in nodes:
            r = runtime.get(n.id)
            if n.status == "up-to-date" and r is None:
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
                launched_at=n.launched_at, outdated=outdated, lost_for=lost_for,
            ))
        return out

    # --- one tick -----------------------------------------------------------------------------------

    def tick(self) -> Plan:
        now = self.clock()
        nodes = self.provider.list_nodes({TAG_CLUSTER: self.name})
        state = self.head.cluster_state()
        a = self.cfg.autoscaler
        limits = Limits(
            max_workers=self.cfg.max_workers, upscaling_speed=self.cfg.upscaling_speed,
            idle_timeout_s=self.cfg.idle_timeout_minutes * 60, max_cost_per_hour=self.cfg.max_cost_per_hour,
            launch_timeout_s=a.launch_timeout_minutes * 60, runtime_grace_s=a.runtime_grace_s,
        )
        types = self.node_types(state)
        demand = [(dict(d.shape.amounts), d.count) for d in state.demand]
        backoff = {t: f["backoff_until"] for t, f in self.failures.items()}
        self.drain_vanished(nodes, state)
        views = self.views(nodes, state, now)
        result = plan(PlanInput(types, views, demand, limits, backoff, now))
        self.act(result, {n.id: n for n in nodes}, {v.id: v for v in views}, now)
        self.adopt(nodes, {i for i, _ in result.terminations})
        self.report(result, nodes, types, demand, now)
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

    def _set_status(self, node: NodeInfo, status: NodeStatus) -> None:
        if can_transition(node.status, status):
            self.provider.set_tags(node.id, {TAG_STATUS: status.value})

    def act(self, p: Plan, nodes: dict[str, NodeInfo], views: dict[str, NodeView], now: float) -> None:
        for node_id, reason in p.drains:
            self.head.drain(node_id)
            self._set_status(nodes[node_id], NodeStatus.DRAINING)
            self.event("drain", node=node_id, reason=reason)

        for node_id, reason in p.terminations:
            node = nodes[node_id]
            if views[node_id].registered:
                # drain first: once the head says it is drained, no work can reach it any more
                reply = self.head.drain(node_id)
                if not reply.drained:
                    self.event("terminate-deferred", node=node_id, reason=f"{reason}; busy with {reply.running}")
                    continue
            # logged first: the node leaves the provider's listing before its processes have all stopped
            self.event("terminate", node=node_id, node_type=node.node_type, reason=reason)
            self._set_status(node, NodeStatus.TERMINATING)
            self.provider.terminate_nodes([node_id])
            self.counters["terminations"][node.node_type] += 1

        for node_type, count in sorted(p.launches.items()):
            self.launch(node_type, count, p.launch_reasons.get(node_type, ""), now)

    def launch(self, node_type: str, count: int, reason: str, now: float) -> None:
        request_id = uuid.uuid4().hex[:12]
        tags = {
            TAG_CLUSTER: self.name, TAG_KIND: KIND_WORKER, TAG_NODE_TYPE: node_type,
            TAG_LAUNCH_HASH: launch_hash(self.cfg, node_type), TAG_STATUS: NodeStatus.PENDING.value,
            TAG_REQUEST_ID: request_id,
        }
        try:
            created = self.provider.create_nodes(node_type, count, tags)
        except (CapacityError, QuotaError, ProviderError) as e:
            self.back_off(node_type, str(e), now)
            return
        self.failures.pop(node_type, None)
        self.counters["launches"][node_type] += len(created)
        self.event("launch", node_type=node_type, count=len(created), asked=count, request=request_id,
                   reason=reason, nodes=[n.id for n in created])
        for node in created:
            self.bootstrap(node)

    def back_off(self, node_type: str, error: str, now: float) -> None:
        a = self.cfg.autoscaler
        f = self.failures.setdefault(node_type, {"count": 0})
        f["count"] += 1
        delay = min(a.backoff_initial_s * 2 ** (f["count"] - 1), a.backoff_max_s)
        f.update(backoff_until=now + delay, last_error=error)
        self.counters["failures"][node_type] += 1
        self.event("launch-failed", node_type=node_type, error=error, backoff_s=delay, failures=f["count"])

    def bootstrap(self, node: NodeInfo) -> None:
        def run():
            try:
                self.cluster.set_up_worker(node, self.token, self.head_address, self.mounts)
                self.event("node-up", node=node.id, node_type=node.node_type)
            except (NodeUpdateFailed, LaunchError) as e:
                self.event("setup-failed", node=node.id, node_type=node.node_type, error=str(e))

        self.bootstrapping[node.id] = self.pool.submit(run)

    def adopt(self, nodes: list[NodeInfo], terminated: set[str]) -> None:
        """Nodes half set up that nobody is setting up (a previous monitor died): finish them."""
        for n in nodes:
            if n.kind == KIND_HEAD or n.id in terminated or n.status not in SETTING_UP:
                continue
            future = self.bootstrapping.get(n.id)
            if future is None or future.done():
                self.event("adopt", node=n.id, node_type=n.node_type, status=n.status)
                self.bootstrap(n)

    # --- report -------------------------------------------------------------------------------------

    def report(self, p: Plan, nodes: list[NodeInfo], types: dict[str, NodeTypeSpec], demand, now: float) -> None:
        by_type_status = Counter((n.node_type, n.status) for n in nodes)
        status = {
            "updated_at": now,
            "pending_demand": [{"shape": dict(shape_of(d)), "count": c} for d, c in demand],
            "launches": p.launches,
            "launch_reasons": p.launch_reasons,
            "terminations": [{"node": i, "reason": r} for i, r in p.terminations],
            "drains": [{"node": i, "reason": r} for i, r in p.drains],
            "infeasible": [{"shape": fmt_shape(s), "count": c, "reason": r} for s, c, r in p.infeasible],
            "unmet": [{"shape": fmt_shape(s), "count": c, "reason": r} for s, c, r in p.unmet],
            "failures": {t: dict(f) for t, f in self.failures.items()},
            "cost_per_hour": round(sum(types[n.node_type].cost_per_hour for n in nodes if n.node_type in types), 4),
            "nodes": [{"node_type": t, "status": s, "count": c} for (t, s), c in sorted(by_type_status.items())],
            "recent_events": list(self.recent)[-10:],
        }
        if p.launches or p.terminations or p.drains:
            self.event("plan", launches=p.launches, terminations=len(p.terminations), drains=len(p.drains))
        with self.lock:
            self.last = status
        path = runtime_dir() / "autoscaler-status.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status, indent=1, sort_keys=True))
        os.replace(tmp, path)

    def metrics(self) -> str:
        with self.lock:
            st = dict(self.last)
            counters = {k: Counter(v) for k, v in self.counters.items()}
        lines = ["# HELP launch_nodes Nodes of the cluster by node type and status.", "# TYPE launch_nodes gauge"]
        for n in st.get("nodes", []):
            lines.append(f'launch_nodes{{node_type="{n["node_type"]}",status="{n["status"]}"}} {n["count"]}')
        lines += ["# HELP launch_pending_demand Queued work that fits no node now, by resource shape.",
                  "# TYPE launch_pending_demand gauge"]
        for d in st.get("pending_demand", []):
            lines.append(f'launch_pending_demand{{shape="{fmt_shape(shape_of(d["shape"]))}"}} {d["count"]}')
        lines += ["# HELP launch_infeasible_demand Work no node type can run.", "# TYPE launch_infeasible_demand gauge"]
        for d in st.get("infeasible", []):
            lines.append(f'launch_infeasible_demand{{shape="{d["shape"]}"}} {d["count"]}')
        for name, help_ in (("launches", "Nodes launched."), ("failures", "Launch failures (capacity, quota)."),
                            ("terminations", "Nodes terminated.")):
            lines += [f"# HELP launch_{name}_total {help_}", f"# TYPE launch_{name}_total counter"]
            for t, v in sorted(counters[name].items()):
                lines.append(f'launch_{name}_total{{node_type="{t}"}} {v}')
        lines += ["# HELP launch_cost_per_hour The fleet's cost in $/h.", "# TYPE launch_cost_per_hour gauge",
                  f"launch_cost_per_hour {st.get('cost_per_hour', 0.0)}"]
        return "\n".join(lines) + "\n"

    def serve_metrics(self) -> ThreadingHTTPServer:
        monitor = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/metrics":
                    self.send_error(404)
                    return
                body = monitor.metrics().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer((self.bind_host, self.cfg.autoscaler.metrics_port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True, name="metrics").start()
        (runtime_dir() / "metrics.address").write_text(f"{self.bind_host}:{server.server_address[1]}")
        return server

    # --- loop ---------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        server = self.serve_metrics()
        self.event("monitor-started", tick_s=self.cfg.autoscaler.tick_s)
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.tick()
            except Exception as e:  # a tick that fails (head busy, provider hiccup) is retried next tick
                log.exception("tick failed")
                self.event("tick-failed", error=f"{type(e).__name__}: {e}"[:500])
            stop.wait(max(0.0, self.cfg.autoscaler.tick_s - (time.monotonic() - started)))
        server.shutdown()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.event("monitor-stopped")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = json.loads((runtime_dir() / "autoscaler.json").read_text())
    monitor = Monitor(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    monitor.run(stop)
    os._exit(0)  # bootstrap threads still running are abandoned: a next monitor adopts their nodes


if __name__ == "__main__":
    main()
