"""What a node type costs per hour, and where that figure comes from: the config's cost_per_hour, else the
shipped catalog's price for its instance type in the cluster's region (the spot price for a spot node
type), else an estimate from its resources.

The catalog (providers/prices.json, looked up by providers/prices.py; autoscaler/price_catalog.py
builds it and says its shape) dates each price with its source. A type it knows in another region only is priced as in the cloud's default region
(and says so); a spot type with no spot price is priced on demand (and says so). Each provider says how
to find the machine type, the spot request and the region (its FACTS).
"""

from __future__ import annotations

from dataclasses import dataclass

import providers
from autoscaler.planner import NodeTypeSpec
from core.config import ClusterConfig
from providers import prices
from providers.prices import Quote, catalog_quote

# $/h per unit when nothing better is known: roughly a cloud's on-demand rate per vCPU, GPU and GiB
ESTIMATE = {"CPU": 0.04, "GPU": 0.50, "memory_gib": 0.005}


def catalog_price(provider: str, node_config: dict, region: str | None = None, spot: bool = False) -> float | None:
    quote = catalog_quote(provider, node_config, region, spot)
    return quote.per_hour if quote else None


def estimate(resources: dict[str, float]) -> float:
    return (ESTIMATE["CPU"] * resources.get("CPU", 1.0) + ESTIMATE["GPU"] * resources.get("GPU", 0.0)
            + ESTIMATE["memory_gib"] * resources.get("memory", 0.0) / 2**30)


def region_of(cfg: ClusterConfig) -> str | None:
    kind = cfg.provider.kind
    key = providers.facts(kind).region_key if kind in providers.KINDS else "region"
    value = getattr(cfg.provider, key, None)
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True)
class LivePrice:
    """A spot price the cloud said (the head asks: autoscaler/monitor.py), and when it was asked."""

    per_hour: float
    at: float
    stale_after_s: float = 3600.0  # older than this, still used but said to be stale (the cloud's refresh x 2)


LIVE_STALE_S = 3600.0  # the shortest staleness limit: a price asked every 10 min is stale after an hour


def is_spot(cfg: ClusterConfig, node_type: str) -> bool:
    nt = cfg.available_node_types[node_type]
    kind = cfg.provider.kind
    return nt.spot or (kind in providers.KINDS and providers.facts(kind).spot_of(nt.node_config))


def machines_of(cfg: ClusterConfig, node_type: str) -> list[str]:
    kind = cfg.provider.kind
    return providers.facts(kind).machines_of(cfg.available_node_types[node_type].node_config) \
        if kind in providers.KINDS else []


def quote(cfg: ClusterConfig, node_type: str, resources: dict[str, float] | None = None,
          live: dict[str, LivePrice] | None = None, now: float = 0.0) -> Quote:
    """The declared price, else the cloud's live spot price for a spot type, else the catalog's for its
    instance type, else an estimate from its resources."""
    nt = cfg.available_node_types[node_type]
    if nt.cost_per_hour is not None:
        return Quote(nt.cost_per_hour, "the config's cost_per_hour")
    machines = machines_of(cfg, node_type)
    live_ones = [(live or {})[m] for m in machines if m in (live or {})] if is_spot(cfg, node_type) else []
    known = min(live_ones, key=lambda p: p.per_hour) if live_ones and len(live_ones) == len(machines) else None
    cheapest = machines[live_ones.index(known)] if known is not None else ""
    attached = _attached_price(cfg, node_type, live or {}) if known is not None else None
    if known is not None and attached is not None:
        age = max(0.0, now - known.at)
        stale = f" (STALE: older than {known.stale_after_s / 60:.0f} min)" if age > known.stale_after_s else ""
        return Quote(round(known.per_hour + attached, 6), f"live: the cloud's spot price, {age / 60:.0f} min ago{stale}",
                     cheapest)
    found = catalog_quote(cfg.provider.kind, nt.node_config, region_of(cfg), nt.spot)
    if found is not None:
        return found
    return Quote(round(estimate(resources if resources is not None else nt.resources), 6),
                 "estimate from its resources (not in the catalog)")


def node_type_spec(cfg: ClusterConfig, name: str, resources: dict[str, float], per_hour: float) -> NodeTypeSpec:
    """The planner's view of a node type, with its resources and price as found (the monitor's tick, `plan`,
    `simulate`)."""
    nt = cfg.available_node_types[name]
    return NodeTypeSpec(name=name, resources=resources, min_workers=nt.min_workers, max_workers=cfg.worker_max(name),
                        cost_per_hour=per_hour, spot=is_spot(cfg, name), idle_timeout_s=nt.idle_timeout_s,
                        priority=nt.priority)


def attached_gpus(cfg: ClusterConfig, node_type: str) -> list[tuple[str, int]]:
    """(GCP) the accelerator types attached to the VM and their counts, priced on top of the machine type."""
    if cfg.provider.kind != "gcp":
        return []
    return [(str(a.get("acceleratorType", "")).rsplit("/", 1)[-1], int(a.get("acceleratorCount", 1)))
            for a in cfg.available_node_types[node_type].node_config.get("guestAccelerators") or []]


def _attached_price(cfg: ClusterConfig, node_type: str, live: dict[str, LivePrice]) -> float | None:
    """What the attached GPUs cost on top of a live machine price: their live price, else the catalog's
    (None: one is unknown to both, and the node is not priced live)."""
    total = 0.0
    for name, count in attached_gpus(cfg, node_type):
        each = live[name].per_hour if name in live else None
        if each is None:
            found = prices.accelerator_quote(name, region_of(cfg), True)
            each = found[0] if found else None
        if each is None:
            return None
        total += each * count
    return total


def catalog_resources(cfg: ClusterConfig, node_type: str) -> dict[str, float]:
    """A node type's shape as the catalog knows its machine type (for equivalents, what every one has; a
    GCP VM's attached GPUs added); {} when the catalog does not know one of them (the cloud says, at `up`)."""
    each = []
    for machine in machines_of(cfg, node_type):
        entry = prices.catalog().get(cfg.provider.kind, {}).get(machine) or {}
        if entry.get("cpus") is None or entry.get("memory_gib") is None:
            return {}
        res = {"CPU": float(entry["cpus"]), "memory": float(entry["memory_gib"]) * 2**30}
        accelerators = entry.get("accelerators") or {}
        if accelerators:
            res["GPU"] = float(sum(accelerators.values()))
            res[f"accelerator_type:{next(iter(accelerators))}"] = 1.0
        each.append(res)
    if not each:
        return {}
    out = {k: min(r.get(k, 0.0) for r in each) for k in set.intersection(*map(set, each))}
    attached = sum(count for _, count in attached_gpus(cfg, node_type))
    if attached:
        out["GPU"] = out.get("GPU", 0.0) + attached
    return out


def live_wanted(cfg: ClusterConfig) -> list[str]:
    """What the planner would use a live spot price of: the machine types of spot types without a declared
    price, and (GCP) the accelerator types attached to them."""
    return sorted({m for name, nt in cfg.available_node_types.items() if nt.cost_per_hour is None and is_spot(cfg, name)
                   for m in machines_of(cfg, name) + [a for a, _ in attached_gpus(cfg, name)]})


@dataclass(frozen=True)
class Offer:
    """One instance type in one region, as `launch prices` lists it."""

    cloud: str
    machine: str
    region: str
    cpus: float | None
    memory_gib: float | None
    accelerators: dict[str, float]
    on_demand: float
    spot: float | None
    source: str

    def gpus(self) -> float:
        return sum(self.accelerators.values())

    def price(self, spot: bool) -> float | None:
        return self.spot if spot else self.on_demand


def offers(cloud: str | None = None, region: str | None = None, gpu: str | None = None,
           spot: bool = False) -> list[Offer]:
    """The catalog's instance types by region (an accelerator named case-insensitively), cheapest first;
    with `spot`, only those with a spot price, by it."""
    out = []
    for name in ("aws", "gcp", "azure"):
        if cloud and name != cloud:
            continue
        for machine, entry in prices.catalog().get(name, {}).items():
            accelerators = entry.get("accelerators") or {}
            if gpu and gpu.lower() not in (a.lower() for a in accelerators):
                continue
            for where, p in (entry.get("regions") or {}).items():
                if (region and where != region) or (spot and p.get("spot") is None):
                    continue
                out.append(Offer(name, machine, where, entry.get("cpus"), entry.get("memory_gib"), accelerators,
                                 p["on_demand"], p.get("spot"), p.get("source", "")))
    return sorted(out, key=lambda o: (o.price(spot), o.cloud, o.machine, o.region))


def source_date(source: str) -> str:
    return prices.catalog().get("sources", {}).get(source, {}).get("date", "")
