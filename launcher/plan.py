"""`launch plan FILE` (and `launch up --dry-run`): what `up` would create now, and what the fleet may cost,
with no cloud call at all (nothing is created; prices and shapes come from the config and the shipped
catalog, as `launch prices` shows them).

The nodes are the planner's own answer (autoscaler.planner.plan, the function the head's autoscaler
runs each tick) for a cluster of the head alone and no demand: min_workers of each type, and why. The
fleet's $/h is given at min_workers, at max_workers (the most it may cost: the dearest types first, each
to its max_workers, to the cluster's max_workers) and capped by max_cost_per_hour. For a cluster that
is up, `plan` adds what its autoscaler decided on its last tick with the demand it saw then.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import providers
from autoscaler.planner import NodeTypeSpec, NodeView, PlanInput, limits_of, plan
from autoscaler.pricing import catalog_resources, is_spot, machines_of, node_type_spec, quote, region_of
from core.config import ClusterConfig
from core.status import NodeStatus
from providers.base import zone_list


@dataclass
class PlannedNodes:
    role: str  # head | worker
    node_type: str
    count: int
    machine: str  # what the price is of (the cheapest of equivalents), or "-" where the config names none
    market: str  # spot | on-demand
    where: str  # the region and zones, in the order `up` tries them
    image: str
    per_hour: float
    why: str  # the price's source; for workers, the planner's reason

    @property
    def total(self) -> float:
        return round(self.per_hour * self.count, 6)


@dataclass
class FleetPlan:
    cluster: str
    provider: str
    nodes: list[PlannedNodes]
    at_min_workers: float
    at_max_workers: float
    max_cost_per_hour: float | None
    resources_unknown: list[str] = field(default_factory=list)  # types whose shape the cloud says at `up`

    @property
    def capped(self) -> float:
        cap = self.max_cost_per_hour
        return self.at_max_workers if cap is None else min(self.at_max_workers, cap)

    def as_dict(self) -> dict:
        return {**asdict(self), "nodes": [{**asdict(n), "total_per_hour": n.total} for n in self.nodes],
                "at_max_workers_under_cap": self.capped}


def _image(kind: str, node_config: dict) -> str:
    if kind == "aws":
        return node_config.get("ImageId") or "the region's default Deep Learning AMI (found at `up`)"
    if kind == "gcp":
        disks = node_config.get("disks") or []
        source = next((d.get("initializeParams", {}).get("sourceImage") for d in disks if d.get("boot")), None)
        return source or "the default Deep Learning VM image"
    if kind == "azure":
        p = node_config.get("azure_arm_parameters") or {}
        if p.get("imageId"):
            return p["imageId"]
        parts = [p.get(k) for k in ("imagePublisher", "imageOffer", "imageSku", "imageVersion")]
        return ":".join(str(x) for x in parts) if any(parts) else "Canonical Ubuntu 22.04 (the default)"
    return "the host's own system"


def _where(cfg: ClusterConfig) -> str:
    region = region_of(cfg)
    zones = zone_list(getattr(cfg.provider, "availability_zone", None))
    if not region:
        return "-"
    return f"{region}: " + (", then ".join(zones) if zones else "any zone")


def type_spec(cfg: ClusterConfig, name: str) -> tuple[NodeTypeSpec, str, str]:
    """(the planner's view of a node type, the machine priced, where its price comes from), from the config
    and the shipped catalog alone."""
    nt = cfg.available_node_types[name]
    resources = dict(nt.resources) or catalog_resources(cfg, name)
    q = quote(cfg, name, resources or None)
    machines = machines_of(cfg, name)
    machine = q.machine or (machines[0] if machines else "-")
    return node_type_spec(cfg, name, resources, q.per_hour), machine, q.source


def fleet_plan(cfg: ClusterConfig, now: float | None = None) -> FleetPlan:
    now = time.time() if now is None else now
    kind = cfg.provider.kind
    specs = {name: type_spec(cfg, name) for name in cfg.available_node_types}
    types = {name: s for name, (s, _, _) in specs.items()}
    head_type = cfg.head_node_type
    head = NodeView(id="head", node_type=head_type, status=NodeStatus.UP_TO_DATE, is_head=True, registered=True,
                    total=types[head_type].resources, available=types[head_type].resources, launched_at=now,
                    idle_since=now)
    p = plan(PlanInput(types, [head], [], limits_of(cfg), {}, now))
    where = _where(cfg)

    def row(role: str, name: str, count: int, why: str) -> PlannedNodes:
        spec, machine, source = specs[name]
        market = "spot" if is_spot(cfg, name) else "on-demand"
        return PlannedNodes(role, name, count, machine, market, where, _image(kind, cfg.node_type(name).node_config),
                            spec.cost_per_hour, f"{source}" + (f"; {why}" if why else ""))

    rows = [row("head", head_type, 1, "")]
    rows += [row("worker", name, count, p.launch_reasons.get(name, "")) for name, count in p.launches.items() if count]
    at_min = round(sum(r.total for r in rows), 6)
    # the most the fleet may cost: the dearest types first, each to its max_workers, to the cluster's cap
    left, at_max = cfg.max_workers, types[head_type].cost_per_hour
    for spec in sorted(types.values(), key=lambda t: -t.cost_per_hour):
        n = min(spec.max_workers, left)
        at_max += n * spec.cost_per_hour
        left -= n
    unknown = [n for n, (s, _, _) in specs.items() if not s.resources and kind in providers.KINDS]
    return FleetPlan(cfg.cluster_name, kind, rows, at_min, round(max(at_min, at_max), 6), cfg.max_cost_per_hour,
                     unknown)
