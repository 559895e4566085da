"""A day of GPU and CPU demand: what the fleet costs when the planner prices node types with the catalog
as it was before issue 31 (us-central1 on-demand list prices, no spot price, the a3 family unknown) and
with today's (the cluster's region, spot for spot types), against the cheapest fleet (a MILP optimum).

    .venv/bin/python bench/fleet_cost.py [--trace examples/gpu_day_trace.json] [--region us-east4]

Every fleet is paid at today's catalog's prices in the cluster's region (what the cloud would bill);
only what the planner believed differs. Each hour the planner sizes a fleet from zero for that hour's
queued work (demand in, cheapest nodes out); the MILP (bench/planner.py's) finds the cheapest fleet that
holds the same work. The trace (examples/gpu_day_trace.json, made by `--make-trace`) is an invented but
typical day: CPU work that follows the working day, single-GPU jobs all day, and large-memory GPU jobs
(that an A100-80GB or an H100 holds) in the afternoon.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autoscaler import pricing  # noqa: E402
from autoscaler.planner import Limits, NodeTypeSpec, PlanInput, plan  # noqa: E402
from providers import prices  # noqa: E402
from bench.planner import milp_cost  # noqa: E402

GIB = 2**30
TRACE = ROOT / "examples" / "gpu_day_trace.json"
BEFORE = ROOT / "bench" / "data" / "prices-before-issue-31.json"  # the catalog as committed before issue 31

# (node type, machine type, resources, spot)
TYPES = [
    ("cpu", "n2-standard-8", {"CPU": 8, "memory": 32 * GIB}, False),
    ("a100", "a2-highgpu-1g", {"CPU": 12, "memory": 85 * GIB, "GPU": 1}, False),
    ("a100-spot", "a2-highgpu-1g", {"CPU": 12, "memory": 85 * GIB, "GPU": 1}, True),
    ("a100-80", "a2-ultragpu-1g", {"CPU": 12, "memory": 170 * GIB, "GPU": 1}, False),
    ("h100", "a3-highgpu-1g", {"CPU": 26, "memory": 234 * GIB, "GPU": 1}, False),
    ("h100-spot", "a3-highgpu-1g", {"CPU": 26, "memory": 234 * GIB, "GPU": 1}, True),
]
SHAPES = {"cpu": {"CPU": 4, "memory": 8 * GIB}, "gpu": {"CPU": 8, "memory": 64 * GIB, "GPU": 1},
          "gpu-big": {"CPU": 8, "memory": 150 * GIB, "GPU": 1}}


def make_trace(seed: int = 31) -> list[dict]:
    rng = random.Random(seed)
    hours = []
    for h in range(24):
        day = max(0.0, math.sin(math.pi * (h - 7) / 12))  # 0 at night, 1 at 13:00
        hours.append({"hour": h, "demand": {
            "cpu": int(40 * day + rng.randint(0, 6)),
            "gpu": 6 + int(10 * day) + rng.randint(0, 3),
            "gpu-big": int(8 * max(0.0, math.sin(math.pi * (h - 11) / 8))) if 11 <= h <= 19 else 0}})
    return hours


def prices_now(region: str) -> dict[str, float]:
    """Today's catalog, in the cluster's region (spot for spot types): the bill."""
    out = {}
    for name, machine, res, spot in TYPES:
        q = pricing.catalog_quote("gcp", {"machineType": machine}, region, spot)
        out[name] = q.per_hour if q else pricing.estimate(res)
    return out


def prices_before() -> dict[str, float]:
    """What the catalog before issue 31 made the planner believe: one region's on-demand list prices for
    every region, no spot price (a spot type priced as on demand), an estimate for what it lacked."""
    old = json.loads(BEFORE.read_text())["gcp"]
    return {name: old.get(machine, pricing.estimate(res)) for name, machine, res, _ in TYPES}


def specs(prices: dict[str, float]) -> dict[str, NodeTypeSpec]:
    return {name: NodeTypeSpec(name, dict(res), 0, 10_000, prices[name], spot)
            for name, _, res, spot in TYPES}


def hour_demand(hour: dict) -> list[tuple[dict, int]]:
    return [(dict(SHAPES[k]), n) for k, n in hour["demand"].items() if n]


def planned_cost(believed: dict[str, float], billed: dict[str, float], demand) -> float:
    result = plan(PlanInput(specs(believed), [], demand, Limits(max_workers=10_000, upscaling_speed=1e9)))
    assert not result.unmet and not result.infeasible, (result.unmet, result.infeasible)
    return sum(billed[t] * k for t, k in result.launches.items())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", default=str(TRACE))
    ap.add_argument("--region", default="us-east4")
    ap.add_argument("--make-trace", action="store_true", help="write the trace and stop")
    args = ap.parse_args()
    if args.make_trace:
        Path(args.trace).write_text(json.dumps(make_trace(), indent=1) + "\n")
        return
    trace = json.loads(Path(args.trace).read_text())
    billed, before = prices_now(args.region), prices_before()
    print(f"GCP {args.region}, $/h billed (today's catalog) vs believed before issue 31:")
    for name, machine, _, spot in TYPES:
        print(f"  {name:<10} {machine:<15} {'spot' if spot else 'on-demand':<10} {billed[name]:>8.4f}  {before[name]:>8.4f}")
    totals = {"before": 0.0, "today": 0.0, "optimum": 0.0}
    kinds = set()
    for hour in trace:
        demand = hour_demand(hour)
        if not demand:
            continue
        totals["before"] += planned_cost(before, billed, demand)
        totals["today"] += planned_cost(billed, billed, demand)
        cost, kind = milp_cost(specs(billed), demand)
        totals["optimum"] += cost
        kinds.add(kind)
    best = totals["optimum"]
    print(f"a day of {sum(sum(h['demand'].values()) for h in trace)} task-hours, fleet sized each hour")
    print(f"{'planner priced with':<34}{'$ / day':>10}{'vs optimum':>12}")
    print(f"{'the catalog before issue 31':<34}{totals['before']:>10.2f}{totals['before'] / best:>12.3f}")
    print(f"{'today`s catalog (region, spot)':<34}{totals['today']:>10.2f}{totals['today'] / best:>12.3f}")
    print(f"{'MILP optimum (' + '/'.join(sorted(kinds)) + ')':<34}{best:>10.2f}{1:>12.3f}")
    cat = prices.catalog()
    print("catalog coverage: " + ", ".join(
        f"{c} {len(cat.get(c, {}))} types / {sum(len(e['regions']) for e in cat.get(c, {}).values())} type-regions "
        f"({sum(1 for e in cat.get(c, {}).values() for p in e['regions'].values() if p.get('spot') is not None)} "
        "with spot)" for c in ("aws", "gcp", "azure")))


if __name__ == "__main__":
    main()
