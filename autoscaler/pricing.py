"""What a node type costs per hour: the config's cost_per_hour, else the shipped catalog, else an estimate.

The catalog (prices.json, with its date and source) covers common AWS, GCP and Azure instance types,
looked up by the node_config key each cloud names its machine with (its provider's FACTS.machine_key). Without either, the price is
estimated from the node type's declared resources, so the planner still compares types sensibly.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import providers
from core.config import ClusterConfig

# $/h per unit when nothing better is known: roughly a cloud's on-demand rate per vCPU, GPU and GiB
ESTIMATE = {"CPU": 0.04, "GPU": 0.50, "memory_gib": 0.005}


@lru_cache(maxsize=1)
def catalog() -> dict:
    return json.loads((Path(__file__).parent / "prices.json").read_text())


def catalog_price(provider: str, node_config: dict) -> float | None:
    key = providers.facts(provider).machine_key if provider in providers.KINDS else ""
    machine = node_config.get(key) if key else None
    if not isinstance(machine, str):
        return None
    machine = machine.rsplit("/", 1)[-1]  # GCP gives a URL: zones/us-central1-a/machineTypes/n2-...
    price = catalog().get(provider, {}).get(machine)
    if price is None or provider != "gcp":
        return price
    gpus = catalog().get("gcp_accelerators", {})
    for acc in node_config.get("guestAccelerators") or []:  # GPUs attached to the VM cost on top of it
        each = gpus.get(str(acc.get("acceleratorType", "")).rsplit("/", 1)[-1])
        if each is None:
            return None  # a GPU the catalog does not know: estimate the whole node instead
        price += each * int(acc.get("acceleratorCount", 1))
    return price


def estimate(resources: dict[str, float]) -> float:
    return (ESTIMATE["CPU"] * resources.get("CPU", 1.0) + ESTIMATE["GPU"] * resources.get("GPU", 0.0)
            + ESTIMATE["memory_gib"] * resources.get("memory", 0.0) / 2**30)


def cost_per_hour(cfg: ClusterConfig, node_type: str, resources: dict[str, float] | None = None) -> float:
    """The declared price, else the catalog's for its instance type, else an estimate from its resources."""
    nt = cfg.available_node_types[node_type]
    if nt.cost_per_hour is not None:
        return nt.cost_per_hour
    price = catalog_price(cfg.provider.kind, nt.node_config)
    return price if price is not None else estimate(resources if resources is not None else nt.resources)
