"""The price catalog (providers/prices.json), looked up: a machine type's price in a region, on demand or
spot, with where it comes from. Its shape (format 2) and how it is built: autoscaler/price_catalog.py.
Data about the clouds' machines, so it lives with the providers: a cloud may order equivalent machine
types by it (providers/aws.py), and the autoscaler prices node types with it (autoscaler/pricing.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import providers

CATALOG = Path(__file__).parent / "prices.json"


@dataclass(frozen=True)
class Quote:
    per_hour: float
    source: str  # where it comes from, for `launch prices` (e.g. "catalog: skypilot-gcp-2026-12-05, us-central1 spot")
    machine: str = ""  # the machine type priced (of equivalents, the cheapest); "" where none is (declared, estimated)


@lru_cache(maxsize=1)
def catalog() -> dict:
    return json.loads(CATALOG.read_text())


def _regional(entry: dict, cloud: str, region: str | None, spot: bool) -> tuple[float, str] | None:
    """(price, where from) of one catalog entry in this region (or the cloud's default region)."""
    regions = entry.get("regions") or {}
    default = catalog().get("default_regions", {}).get(cloud)
    here = regions.get(region) if region else None
    where = region
    if here is None and default in regions:
        here, where = regions[default], f"{default}'s price" + (f" (none for {region})" if region else "")
    if here is None:
        return None
    name = str(here.get("source"))
    date = catalog().get("sources", {}).get(name, {}).get("date", "")
    dated = name if date in name else f"{name} ({date})"
    if spot and here.get("spot") is not None:
        return here["spot"], f"catalog: {dated}, {where} spot"
    note = ", no spot price: on-demand" if spot else ""
    return here["on_demand"], f"catalog: {dated}, {where} on-demand{note}"


def machine_quote(provider: str, machine: str, region: str | None, spot: bool) -> tuple[float, str] | None:
    """(price, where from) of one machine type in a region, or None if the catalog does not know it."""
    entry = catalog().get(provider, {}).get(machine)
    return _regional(entry, provider, region, spot) if entry is not None else None


def accelerator_quote(name: str, region: str | None, spot: bool) -> tuple[float, str] | None:
    """(price, where from) of one GPU of a GCP accelerator type attached to a VM, or None if unknown."""
    entry = catalog().get("gcp_accelerators", {}).get(name)
    return _regional(entry, "gcp", region, spot) if entry is not None else None


def catalog_quote(provider: str, node_config: dict, region: str | None = None, spot: bool = False) -> Quote | None:
    if provider not in providers.KINDS:
        return None
    facts = providers.facts(provider)
    spot = spot or facts.spot_of(node_config)
    machines = facts.machines_of(node_config)
    quotes = [(m, machine_quote(provider, m, region, spot)) for m in machines]
    known = sorted(((q[0], m, q[1]) for m, q in quotes if q is not None), key=lambda t: t[0])
    if not known:
        return None
    price, machine, source = known[0]
    if len(machines) > 1:
        source = f"{source}; {machine}, the cheapest of {len(machines)}"
    if provider == "gcp":  # GPUs attached to the VM cost on top of it
        for acc in node_config.get("guestAccelerators") or []:
            each = accelerator_quote(str(acc.get("acceleratorType", "")).rsplit("/", 1)[-1], region, spot)
            if each is None:
                return None  # a GPU the catalog does not know: estimate the whole node instead
            price += each[0] * int(acc.get("acceleratorCount", 1))
    return Quote(round(price, 6), source, machine)
