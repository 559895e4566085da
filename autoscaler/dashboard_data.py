"""The dashboard's JSON API (autoscaler/dashboard.py serves it): what each page shows, from the head service
(nodes, demand, work), the autoscaler's files on the head (its last tick, its event log, the cost history)
and the workers' setup logs. Every answer is a dict of plain JSON; the API is documented in the docs
(docs/dashboard.md) and useful to scripts (`Authorization: Bearer <the cluster's token>`)."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

from autoscaler.history import read_events, read_history, spent_since
from core.paths import (COST_HISTORY, HEAD_ADDRESS, HEAD_CLUSTER_STATE, HEAD_SPEC, LOGS, MONITOR_STATUS, node_log_name,
                        on_this_node)

STALE_TICKS = 6  # an autoscaler whose last tick is older than this many ticks is not ticking
SLOWEST = 10
FAILED_SHOWN = 20
LOG_CHUNK = 256 * 1024
LISTED = 500  # done items a page lists (the newest); live ones are all listed
TIMELINE_EVENTS = {"launch", "launch-failed", "terminate", "terminate-deferred", "terminate-failed", "drain",
                   "undrain", "preempt-notice", "preempted-node-gone", "instance-gone", "node-up", "setup-failed",
                   "adopt", "permission-denied", "down", "monitor-started", "monitor-stopped", "plan"}


def _amounts(resources) -> dict[str, float]:
    return {k: round(v, 4) for k, v in sorted(resources.amounts.items()) if not k.startswith("node:")}


class Sources:
    """Where the data is: the head service (a client made on first use, made again after a failure) and the
    head's files."""

    def __init__(self, token: str):
        self.token = token
        self._client = None

    def head(self):
        from runtime.client import HeadClient

        if self._client is None:
            address = on_this_node(HEAD_ADDRESS).read_text().strip()
            self._client = HeadClient(address, self.token, timeout_s=5.0)
        return self._client

    def reset(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def status(self) -> dict:
        try:
            return json.loads(on_this_node(MONITOR_STATUS).read_text())
        except (OSError, ValueError):
            return {}

    def events_path(self) -> Path:
        return on_this_node(LOGS) / "autoscaler.log"


def _spec() -> dict:
    try:
        return json.loads(on_this_node(HEAD_SPEC).read_text())
    except (OSError, ValueError):
        return {}


def cluster_facts() -> dict:
    spec = _spec()
    cfg = spec.get("config", {})
    return {"cluster": cfg.get("cluster_name", ""), "provider": (cfg.get("provider") or {}).get("type", ""),
            "max_cost_per_hour": cfg.get("max_cost_per_hour"), "max_workers": cfg.get("max_workers"),
            "tick_s": (cfg.get("autoscaler") or {}).get("tick_s", 5.0)}


def overview(src: Sources) -> dict:
    state = src.head().cluster_state()
    status = src.status()
    facts = cluster_facts()
    used: dict[str, float] = {}
    total: dict[str, float] = {}
    for n in state.nodes:
        if n.state != "alive":
            continue
        t, a = _amounts(n.total), _amounts(n.available)
        for k, v in t.items():
            total[k] = total.get(k, 0.0) + v
            used[k] = used.get(k, 0.0) + v - a.get(k, 0.0)
    age = state.now - status["updated_at"] if status.get("updated_at") else None
    return {
        **facts, "now": state.now,
        "nodes": status.get("nodes", []),
        "runtime_nodes": sum(1 for n in state.nodes if n.state == "alive"),
        "resources": {k: {"used": round(used.get(k, 0.0), 3), "total": round(v, 3)} for k, v in sorted(total.items())},
        "demand": [{"shape": _amounts(d.shape), "count": d.count} for d in state.demand],
        "infeasible": [{"shape": _amounts(d.shape), "count": d.count, "reason": d.reason} for d in state.infeasible]
        + [{"shape": d["shape"], "count": d["count"], "reason": d["reason"]} for d in status.get("unmet", [])],
        "autoscaler": {"last_tick_age_s": None if age is None else round(age, 1),
                       "alive": age is not None and age < STALE_TICKS * max(1.0, facts["tick_s"]) + 10,
                       "launches": status.get("launches", {}), "launch_reasons": status.get("launch_reasons", {}),
                       "terminations": status.get("terminations", []), "failures": status.get("failures", {}),
                       "recent_events": status.get("recent_events", [])},
        "cost_per_hour": status.get("cost_per_hour", 0.0),
    }


def cost(src: Sources, now: float | None = None) -> dict:
    now = time.time() if now is None else now
    records = read_history(on_this_node(COST_HISTORY))
    status = src.status()
    prices = status.get("prices", {})
    last = records[-1] if records else {"nodes": {}, "per_hour": 0.0, "spot_per_hour": 0.0, "run_start": now}
    midnight = datetime.fromtimestamp(now, timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    by_type = {}
    for t, n in last["nodes"].items():
        each = (prices.get(t) or {}).get("per_hour", 0.0)
        by_type[t] = {"count": n["count"], "spot": n["spot"], "per_hour_each": each,
                      "per_hour": round(each * n["count"], 4), "source": (prices.get(t) or {}).get("source", "")}
    return {
        "per_hour": last["per_hour"], "spot_per_hour": last["spot_per_hour"],
        "on_demand_per_hour": round(last["per_hour"] - last["spot_per_hour"], 6),
        "today_usd": round(spent_since(records, midnight, now), 4),
        "since_up_usd": round(spent_since(records, last["run_start"], now), 4), "up_at": last["run_start"],
        "max_cost_per_hour": cluster_facts()["max_cost_per_hour"], "by_type": by_type,
        "series": [{"t": r["t"], "per_hour": r["per_hour"], "nodes": sum(n["count"] for n in r["nodes"].values())}
                   for r in records[-2000:]],
    }


def events(src: Sources, node_type: str = "", kind: str = "", limit: int = 500) -> dict:
    found = []
    for e in reversed(read_events(src.events_path())):
        if e.get("event") not in TIMELINE_EVENTS:
            continue
        if kind and e.get("event") != kind:
            continue
        types = set(e.get("launches", {})) if e.get("event") == "plan" else {e.get("node_type", "")}
        if node_type and node_type not in types:
            continue
        found.append(e)
        if len(found) >= limit:
            break
    return {"events": found, "node_types": sorted(cluster_node_types()), "kinds": sorted(TIMELINE_EVENTS)}


def cluster_node_types() -> list[str]:
    return list((_spec().get("config", {}).get("available_node_types") or {}))


def _item(i) -> dict:
    return {"id": i.id, "kind": i.kind, "name": i.name, "state": i.state, "node": i.node_id,
            "resources": _amounts(i.request), "submitted_at": i.submitted_at, "started_at": i.started_at,
            "finished_at": i.finished_at, "exit_code": i.exit_code, "message": i.message, "attempt": i.attempt}


def jobs(src: Sources) -> dict:
    return {"jobs": [_item(i) for i in reversed(src.head().recent_items("job", LISTED).items)]}


def job_logs(src: Sources, job_id: str, offset: int) -> dict:
    reply = src.head().job_logs(job_id, offset)
    data = reply.data[:LOG_CHUNK]
    return {"data": data.decode("utf-8", "replace"), "offset": offset + len(data),
            "done": reply.done and len(data) == len(reply.data)}


def work(src: Sources) -> dict:
    """Tasks and actors by state; the slowest running and the failed ones with their errors; placement groups."""
    head = src.head()
    now = head.cluster_state().now
    out: dict = {}
    for kind in ("task", "actor"):
        reply = head.recent_items(kind, LISTED)  # (a busy cluster's 100,000 done tasks are counted, not sent)
        items, counts = reply.items, dict(reply.counts)
        running = sorted((i for i in items if i.state == "running"), key=lambda i: i.started_at)[:SLOWEST]
        failed = [i for i in items if i.state == "failed"][-FAILED_SHOWN:]
        out[kind + "s"] = {"counts": counts,
                           "slowest": [{**_item(i), "running_s": round(now - i.started_at, 1)} for i in running],
                           "failed": [_item(i) for i in reversed(failed)]}
    out["groups"] = [_item(i) for i in reversed(head.recent_items("pg", LISTED).items)]
    return out


def nodes(src: Sources) -> dict:
    state = src.head().cluster_state()
    return {"nodes": [{"id": n.node_id, "node_type": n.node_type, "address": n.address, "is_head": n.is_head,
                       "state": n.state, "total": _amounts(n.total), "available": _amounts(n.available),
                       "running": n.running, "draining": n.draining, "idle_since": n.idle_since,
                       "registered_at": n.registered_at, "preempt_at": n.preempt_at}
                      for n in sorted(state.nodes, key=lambda n: (not n.is_head, n.state != "alive", n.node_id))],
            "now": state.now}


def node(src: Sources, node_id: str) -> dict | None:
    found = [n for n in nodes(src)["nodes"] if n["id"] == node_id]
    if not found:
        return None
    items = [_item(i) for i in src.head().recent_items("", 1).items if i.node_id == node_id and i.state == "running"]
    log = Path(on_this_node(HEAD_CLUSTER_STATE)) / node_log_name(node_id)
    try:
        text = log.read_bytes()[-LOG_CHUNK:].decode("utf-8", "replace")
    except OSError:
        text = ""
    return {**found[0], "work": items, "setup_log": text}
