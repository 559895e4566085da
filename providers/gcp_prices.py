"""GCP's spot prices from its own catalog: the Cloud Billing Catalog API's SKUs of Compute Engine.

GCE prices a VM by parts: each machine family has a price per vCPU-hour and per GiB-hour of memory (SKUs
"Spot Preemptible N2 Instance Core running in Americas", "... Instance Ram ..."), and each GPU its own
("Spot Preemptible Nvidia L4 GPU running in Americas"). A machine type's spot price is its vCPUs times
the core price plus its memory times the RAM price, plus its built-in GPUs (a2, a3, g2); a GPU attached
to an n1 (guestAccelerators) is priced on its own, by its accelerator type name. Google changes spot
prices at most once a month: the head asks at most daily (`Provider.spot_prices_every_s`).

    GET {endpoint}/v1/services/6F81-5844-456A/skus?currencyCode=USD&pageToken=...
    {"skus": [{"description", "category": {"resourceFamily", "resourceGroup", "usageType"},
               "serviceRegions": [...], "pricingInfo": [{"pricingExpression": {"usageUnit",
               "tieredRates": [{"unitPrice": {"units", "nanos"}}]}}]}], "nextPageToken": ""}
"""

from __future__ import annotations

import re

COMPUTE_ENGINE = "6F81-5844-456A"  # the Cloud Billing service id of Compute Engine
PART = re.compile(r"^Spot Preemptible (?P<family>[A-Z0-9]+) (?:Predefined |AMD |Arm )?Instance (?P<part>Core|Ram)\b")
GPU = re.compile(r"^Spot Preemptible (?P<name>Nvidia .+?) GPU\b")
IGNORED_WORDS = {"nvidia", "tesla", "gpu"}


def fetch_skus(session, endpoint: str) -> list[dict]:
    """Every SKU of Compute Engine, page by page (`session`: an authorized requests session)."""
    skus: list[dict] = []
    token = ""
    while True:
        params = {"currencyCode": "USD", "pageSize": 5000, **({"pageToken": token} if token else {})}
        reply = session.get(f"{endpoint.rstrip('/')}/v1/services/{COMPUTE_ENGINE}/skus", params=params, timeout=60)
        reply.raise_for_status()
        page = reply.json()
        skus += page.get("skus") or []
        token = page.get("nextPageToken") or ""
        if not token:
            return skus


def _hourly(sku: dict) -> float | None:
    """The SKU's first tier's price per unit-hour ($/h for a core or GPU, $/GiB-h for memory)."""
    try:
        expression = sku["pricingInfo"][0]["pricingExpression"]
        rate = expression["tieredRates"][-1]["unitPrice"]  # (the first tier may be a free one)
        return int(rate.get("units") or 0) + int(rate.get("nanos") or 0) / 1e9
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def spot_rates(skus: list[dict], region: str) -> tuple[dict[tuple[str, str], float], dict[str, float]]:
    """({(family, "Core" | "Ram"): $/unit-h}, {GPU name as GCP says it: $/h}) of spot SKUs in `region`."""
    parts: dict[tuple[str, str], float] = {}
    gpus: dict[str, float] = {}
    for sku in skus:
        category = sku.get("category") or {}
        if category.get("usageType") != "Preemptible" or region not in (sku.get("serviceRegions") or []):
            continue
        price = _hourly(sku)
        description = str(sku.get("description", ""))
        if price is None or "Commit" in description or "Custom" in description or "Sole Tenancy" in description:
            continue
        if m := PART.match(description):
            parts.setdefault((m.group("family"), m.group("part")), price)
        elif m := GPU.match(description):
            gpus.setdefault(m.group("name"), price)
    return parts, gpus


def gpu_price(gpus: dict[str, float], accelerator_type: str) -> float | None:
    """The price of one GPU of an accelerator type ("nvidia-tesla-t4", "nvidia-l4", "nvidia-h100-80gb"):
    the SKU whose model words are exactly the type's."""
    wanted = {w for w in accelerator_type.lower().split("-") if w not in IGNORED_WORDS}
    for name, price in gpus.items():
        if {w for w in name.lower().split() if w not in IGNORED_WORDS} == wanted:
            return price
    return None


def machine_price(parts: dict[tuple[str, str], float], gpus: dict[str, float], machine: str, cpus: float,
                  memory_gib: float, built_in: list[tuple[str, int]]) -> float | None:
    """A machine type's spot price from its family's parts and its built-in GPUs (None: a part unknown)."""
    family = machine.split("-", 1)[0].upper()
    core, ram = parts.get((family, "Core")), parts.get((family, "Ram"))
    if core is None or ram is None:
        return None
    price = cpus * core + memory_gib * ram
    for accelerator, count in built_in:
        each = gpu_price(gpus, accelerator)
        if each is None:
            return None
        price += each * count
    return round(price, 6)
