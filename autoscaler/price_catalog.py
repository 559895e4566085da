"""Builds the price catalog (providers/prices.json) from public price sources: run by maintainers, its
output committed; tests run it on recorded slices (tests/data/prices/), never on the network.

    python -m autoscaler.price_catalog --skypilot gcp=vms.csv [--skypilot aws=...] [--commit SHA]
                                       [--date YYYY-MM-DD] [-o providers/prices.json]

A source today is SkyPilot's public catalog (skypilot-org/skypilot-catalog, catalogs/v7/<cloud>/vms.csv,
refreshed there from AWS's Price List, the GCP Cloud Billing catalog and Azure's Retail Prices API): one
row per instance type and zone with vCPUs, memory, accelerators, on-demand and spot price, read by its
header's names (the clouds' files order their columns differently). Per type and region the catalog
keeps the on-demand price and the lowest spot price among its zones, each saying which source and date
it comes from; what the sources given now do not cover stays as it was.

The catalog's shape (format 2):
    {"format": 2, "sources": {ID: {"what": ..., "date": ...}}, "default_regions": {cloud: region},
     cloud: {type: {"cpus", "memory_gib", "accelerators": {name: count},
                    "regions": {region: {"on_demand", "spot" (or null), "source": ID}}}},
     "gcp_accelerators": {name: {"regions": {...}}}}     (GPUs attached to a GCP VM, priced on top of it)
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

from providers.prices import CATALOG  # noqa: E402
FORMAT = 2

# GCP machine families whose GPUs come with the machine type: SkyPilot's rows leave them unnamed
GCP_BUILT_IN = (("a2-highgpu-", "A100"), ("a2-megagpu-", "A100"), ("a2-ultragpu-", "A100-80GB"),
                ("a3-highgpu-", "H100"), ("a3-edgegpu-", "H100"), ("a3-megagpu-", "H100-MEGA"),
                ("a3-ultragpu-", "H200"), ("g2-standard-", "L4"))
G2_GPUS = {"24": 2, "48": 4, "96": 8}  # g2-standard-N: one L4 unless N is one of these


class SourceError(ValueError):
    pass


def _number(row: dict, key: str) -> float | None:
    raw = (row.get(key) or "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise SourceError(f"{key}: {raw!r} is not a number") from None
    return value if value >= 0 else None


def _built_in_gpus(cloud: str, machine: str) -> dict[str, float]:
    if cloud != "gcp":
        return {}
    for prefix, name in GCP_BUILT_IN:
        if machine.startswith(prefix):
            size = machine[len(prefix):]
            if prefix == "g2-standard-":
                return {name: G2_GPUS.get(size, 1)}
            count = re.match(r"(\d+)g", size)
            return {name: int(count.group(1))} if count else {}
    return {}


def read_skypilot(cloud: str, lines, source: str) -> dict[str, dict]:
    """One cloud's vms.csv -> {type: entry}, each region's prices the lowest of its zones.

    GCP's rows price a GPU family's machine type (a2, a3, g2) without its GPUs, whose prices are rows of
    their own (no instance type, the accelerator named): a machine type's price is both; where the file
    lacks its GPUs' price in a region, that region is left out rather than priced too low."""
    rows = csv.DictReader(lines)
    needed = {"InstanceType", "Region", "Price", "SpotPrice", "vCPUs", "MemoryGiB"}
    missing = needed - set(rows.fieldnames or ())
    if missing:
        raise SourceError(f"not a SkyPilot catalog: no {', '.join(sorted(missing))} column")
    out: dict[str, dict] = {}
    gpus: dict[str, dict[str, dict]] = {}  # accelerator -> region -> its prices (rows without a type)
    for n, row in enumerate(rows, start=2):
        machine, region = (row.get("InstanceType") or "").strip(), (row.get("Region") or "").strip()
        name = (row.get("AcceleratorName") or "").strip()
        try:
            on_demand, spot = _number(row, "Price"), _number(row, "SpotPrice")
            cpus, memory = _number(row, "vCPUs"), _number(row, "MemoryGiB")
            count = _number(row, "AcceleratorCount")
        except SourceError as e:
            raise SourceError(f"line {n}: {e}") from None
        if not region or on_demand is None:
            continue
        if not machine:
            if name:
                _lowest(gpus.setdefault(name, {}), region, on_demand, spot, source)
            continue
        entry = out.setdefault(machine, {"cpus": cpus, "memory_gib": memory, "accelerators": {}, "regions": {}})
        entry["accelerators"] = {name: count or 1} if name else _built_in_gpus(cloud, machine)
        _lowest(entry["regions"], region, on_demand, spot, source)
    for machine, entry in out.items():
        built_in = _built_in_gpus(cloud, machine)
        if built_in:
            entry["regions"] = _with_gpus(entry["regions"], built_in, gpus)
    return {m: e for m, e in out.items() if e["regions"]}


def _lowest(regions: dict, region: str, on_demand: float, spot: float | None, source: str) -> None:
    here = regions.setdefault(region, {"on_demand": on_demand, "spot": None, "source": source})
    here["on_demand"] = min(here["on_demand"], on_demand)
    if spot is not None:
        here["spot"] = spot if here["spot"] is None else min(here["spot"], spot)


def _with_gpus(regions: dict, built_in: dict[str, float], gpus: dict[str, dict]) -> dict:
    """A GPU family's regions priced with their GPUs; a region whose GPU price is unknown is left out."""
    out = {}
    for region, p in regions.items():
        parts = [(gpus.get(name, {}).get(region), count) for name, count in built_in.items()]
        if any(g is None for g, _ in parts):
            continue
        spot = p["spot"]
        if spot is not None and all(g["spot"] is not None for g, _ in parts):
            spot = round(spot + sum(g["spot"] * c for g, c in parts), 6)
        else:
            spot = None
        out[region] = {**p, "on_demand": round(p["on_demand"] + sum(g["on_demand"] * c for g, c in parts), 6),
                       "spot": spot}
    return out


def merge(catalog: dict, cloud: str, entries: dict[str, dict]) -> dict:
    """The catalog with these entries' regions laid over its own (what they do not name stays)."""
    types = catalog.setdefault(cloud, {})
    for machine, new in entries.items():
        old = types.get(machine, {})
        types[machine] = {**old, **{k: v for k, v in new.items() if k != "regions"},
                          "regions": {**old.get("regions", {}), **new["regions"]}}
    return catalog


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m autoscaler.price_catalog")
    ap.add_argument("--skypilot", action="append", default=[], metavar="CLOUD=FILE",
                    help="a SkyPilot vms.csv of aws, gcp or azure")
    ap.add_argument("--commit", default="", help="the skypilot-catalog commit the files are from")
    ap.add_argument("--date", required=True, help="when the sources were read (YYYY-MM-DD)")
    ap.add_argument("-o", "--output", default=str(CATALOG))
    args = ap.parse_args(argv)
    catalog = json.loads(Path(args.output).read_text()) if Path(args.output).exists() else {}
    if catalog and catalog.get("format") != FORMAT:
        print(f"{args.output}: not a format {FORMAT} catalog", file=sys.stderr)
        return 2
    catalog.setdefault("format", FORMAT)
    for given in args.skypilot:
        cloud, _, path = given.partition("=")
        if cloud not in ("aws", "gcp", "azure") or not path:
            print(f"--skypilot {given}: expected aws=FILE, gcp=FILE or azure=FILE", file=sys.stderr)
            return 2
        source = f"skypilot-{cloud}-{args.date}"
        try:
            with open(path, newline="") as f:
                entries = read_skypilot(cloud, f, source)
        except (OSError, SourceError) as e:
            print(f"{path}: {e}", file=sys.stderr)
            return 2
        if entries:
            catalog.setdefault("sources", {})[source] = {
                "what": f"skypilot-org/skypilot-catalog catalogs/v7/{cloud}/vms.csv"
                        + (f" at {args.commit}" if args.commit else "") + f" ({Path(path).name})",
                "date": args.date}
            merge(catalog, cloud, entries)
        print(f"{cloud}: {len(entries)} instance types, {sum(len(e['regions']) for e in entries.values())} "
              f"type-regions from {path}")
    Path(args.output).write_text(json.dumps(catalog, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
