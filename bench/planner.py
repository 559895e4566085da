"""The planner against Ray's ResourceDemandScheduler on the same inputs, and against a MILP optimum.

    .venv/bin/python bench/planner.py [--ray-python PATH] [--skip-ray]

For each mix (5 or 20 node types; 1,000 / 10,000 / 100,000 queued demands of a few shapes; 0 or 1,000
running nodes, all busy) it prints the time per decision of both planners, the ratio, the $/h of the
fleet each chooses, and each one's gap to the cost of the optimum from a small MILP
(scipy.optimize.milp). Where the ways to fill one node are few enough to enumerate, the MILP chooses
integer counts of whole-node packing patterns: the exact optimum ("exact"). Otherwise it packs items
into each type's aggregate capacity: a lower bound on the optimum ("bound"), tight when shapes divide
node sizes and loose when they do not.
Ray runs from its own venv (bench/.ray-venv, or --ray-python); Ray's planner is skipped at 100,000
demands, where it needs many minutes (measured here: 1,000 in 0.4 s, 10,000 in 10 s). Then our planner
alone on 1,000,000 demands.

Then placement groups (gang demand): 1,000 pending groups of 2-16 bundles (all four strategies) among
10,000 queued tasks, planned from zero by both planners; each fleet's cost against a MILP lower bound
(every bundle and task packed into aggregate capacity, a STRICT_PACK group as one item, strategies
otherwise relaxed), and whether each fleet can in fact hold every group with its strategy (checked by
placing the groups and tasks on the launched nodes, strategy respected, best fit).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autoscaler.planner import GroupDemand, Limits, NodeTypeSpec, NodeView, PlanInput, plan, shape_of  # noqa: E402

GIB = 2**30
SHAPES = [
    ({"CPU": 1}, 0.45),
    ({"CPU": 2, "memory": 8 * GIB}, 0.25),
    ({"CPU": 4, "memory": 16 * GIB}, 0.15),
    ({"CPU": 1, "memory": 2 * GIB}, 0.10),
    ({"CPU": 4, "GPU": 1}, 0.05),
]
# shapes that do not divide node sizes: where a greedy packer is most likely to lose to the optimum
AWKWARD = [
    ({"CPU": 3}, 0.40),
    ({"CPU": 6, "memory": 20 * GIB}, 0.25),
    ({"CPU": 5, "memory": 40 * GIB}, 0.20),
    ({"CPU": 3, "GPU": 1}, 0.15),
]
BASE_TYPES = [
    ("cpu4", {"CPU": 4, "memory": 16 * GIB}, 0.192),
    ("cpu16", {"CPU": 16, "memory": 64 * GIB}, 0.768),
    ("mem8", {"CPU": 8, "memory": 64 * GIB}, 0.504),
    ("gpu1", {"CPU": 8, "memory": 32 * GIB, "GPU": 1}, 1.006),
    ("gpu4", {"CPU": 48, "memory": 192 * GIB, "GPU": 4}, 5.672),
]


def node_types(n: int) -> dict[str, NodeTypeSpec]:
    rng = random.Random(7)
    out = {}
    for i in range(n):
        name, res, price = BASE_TYPES[i % len(BASE_TYPES)]
        if i >= len(BASE_TYPES):  # variants: other sizes, prices a little off the base rate
            scale = (2, 4, 8)[(i // len(BASE_TYPES)) % 3]
            res = {k: v * scale for k, v in res.items()}
            price = price * scale * rng.uniform(0.92, 1.08)
            name = f"{name}-x{scale}-{i}"
        out[name] = NodeTypeSpec(name, dict(res), 0, 100_000, round(price, 4))
    return out


def demands(total: int, shapes=SHAPES) -> list[tuple[dict, int]]:
    return [(dict(s), int(total * w)) for s, w in shapes]


def running_nodes(n: int, types: dict[str, NodeTypeSpec]) -> list[NodeView]:
    names = sorted(types)
    return [NodeView(id=f"n{i}", node_type=names[i % len(names)], status="up-to-date", registered=True,
                     total=dict(types[names[i % len(names)]].resources), available={}, running=1)
            for i in range(n)]


def fleet_cost(launches: dict[str, int], types: dict[str, NodeTypeSpec]) -> float:
    return sum(types[t].cost_per_hour * k for t, k in launches.items())


def run_ours(types, demand, nodes, repeat=3) -> tuple[float, dict]:
    lim = Limits(max_workers=1_000_000, upscaling_speed=1e9)
    inp = PlanInput(types, nodes, demand, lim)
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = plan(inp)
        best = min(best, time.perf_counter() - t0)
    assert not result.unmet and not result.infeasible, result.unmet
    return best, result.launches


def patterns(capacity: dict, shapes: list[dict], limit: int) -> list[tuple[int, ...]] | None:
    """Every way to fill one node with items of these shapes (None if more than `limit`)."""
    out: list[tuple[int, ...]] = []

    def rec(i: int, cap: dict, counts: list[int]) -> bool:
        if len(out) > limit:
            return False
        if i == len(shapes):
            if any(counts):
                out.append(tuple(counts))
            return True
        k = 0
        while True:  # k items of shape i, then the rest of the capacity for the shapes after it
            left = {r: cap.get(r, 0.0) - v * k for r, v in shapes[i].items()}
            if not rec(i + 1, {**cap, **left}, counts + [k]):
                return False
            if not all(left[r] + 1e-9 >= v for r, v in shapes[i].items()):
                return True
            k += 1

    return out if rec(0, dict(capacity), []) else None


def milp_cost(types, demand, pattern_limit=200_000) -> tuple[float, str]:
    """(cost, kind): "exact" from a MILP over whole-node packing patterns when they are few enough to
    enumerate, else "bound" from the aggregate-capacity MILP (a lower bound on the true optimum)."""
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp

    shapes = [d for d, _ in demand]
    columns = []  # (cost, pattern)
    for t in types.values():
        pats = patterns(t.resources, shapes, pattern_limit)
        if pats is None:
            columns = None
            break
        columns += [(t.cost_per_hour, p) for p in pats]
    if columns is not None and len(columns) <= pattern_limit:
        c = np.array([cost for cost, _ in columns])
        a = np.array([[p[s] for _, p in columns] for s in range(len(shapes))], dtype=float)
        res = milp(c, constraints=LinearConstraint(a, [n for _, n in demand], np.inf),
                   integrality=np.ones(len(columns)), bounds=Bounds(0, np.inf),
                   options={"time_limit": 120, "mip_rel_gap": 1e-7})
        if res.x is not None and res.status == 0:
            return float(res.fun), "exact"
    return _aggregate_bound(types, demand), "bound"


def _aggregate_bound(types, demand) -> float:
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp

    names = sorted(types)
    resources = sorted({k for t in types.values() for k in t.resources} | {k for d, _ in demand for k in d})
    S, T = len(demand), len(names)
    # variables: n_t (T), then a_{s,t} (S*T), all integers >= 0
    c = np.array([types[t].cost_per_hour for t in names] + [0.0] * (S * T))
    rows, lo, hi = [], [], []
    for s, (_, count) in enumerate(demand):  # every item of every shape is placed
        row = np.zeros(T + S * T)
        row[T + s * T: T + (s + 1) * T] = 1
        rows.append(row), lo.append(count), hi.append(count)
    for ti, t in enumerate(names):  # a type's items fit in its nodes' aggregate capacity
        for r in resources:
            row = np.zeros(T + S * T)
            row[ti] = -types[t].resources.get(r, 0.0)
            for s, (shape, _) in enumerate(demand):
                row[T + s * T + ti] = shape.get(r, 0.0)
            rows.append(row), lo.append(-np.inf), hi.append(0.0)
    res = milp(c, constraints=LinearConstraint(np.array(rows), lo, hi), integrality=np.ones(T + S * T),
               bounds=Bounds(0, np.inf), options={"time_limit": 120, "mip_rel_gap": 1e-7})
    if res.x is None:
        raise RuntimeError(f"MILP failed: {res.message}")
    return float(res.fun)


RAY_SCRIPT = r"""
import json, logging, sys, time
logging.getLogger("ray.autoscaler._private.resource_demand_scheduler").setLevel(logging.ERROR)
from ray.autoscaler._private.resource_demand_scheduler import ResourceDemandScheduler
from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
from ray.autoscaler.tags import TAG_RAY_USER_NODE_TYPE, TAG_RAY_NODE_KIND, NODE_KIND_WORKER, NODE_KIND_HEAD
sc = json.load(sys.stdin)
types = {n: {"resources": r, "min_workers": 0, "max_workers": 100000, "node_config": {}} for n, r in sc["types"].items()}
types["head"] = {"resources": {}, "min_workers": 0, "max_workers": 0, "node_config": {}}
nodes = {f"n{i}": t for i, t in enumerate(sc["running"])}
nodes["head"] = "head"
class Provider:
    def non_terminated_nodes(self, tags): return list(nodes)
    def node_tags(self, n): return {TAG_RAY_USER_NODE_TYPE: nodes[n], TAG_RAY_NODE_KIND: NODE_KIND_HEAD if n == "head" else NODE_KIND_WORKER}
    def internal_ip(self, n): return "ip-" + n
sched = ResourceDemandScheduler(Provider(), types, max_workers=1000000, head_node_type="head", upscaling_speed=1e9)
demands = [d for d, c in sc["demand"] for _ in range(c)]
max_res = {"ip-" + n: (types[t]["resources"]) for n, t in nodes.items()}
unused = {"ip-" + n: {} for n in nodes}
from ray.core.generated.common_pb2 import Bundle, PlacementStrategy
from ray._private.gcs_utils import PlacementGroupTableData
pgs = [PlacementGroupTableData(bundles=[Bundle(unit_resources=b) for b in bundles],
                               strategy=getattr(PlacementStrategy, strategy)) for bundles, strategy in sc.get("groups", [])]
t0 = time.perf_counter()
launch, unfulfilled = sched.get_nodes_to_launch(nodes=list(nodes), launching_nodes={}, resource_demands=demands,
    unused_resources_by_ip=unused, pending_placement_groups=pgs, max_resources_by_ip=max_res,
    ensure_min_cluster_size=[], node_availability_summary=NodeAvailabilitySummary(node_availabilities={}))
print(json.dumps({"time_s": time.perf_counter() - t0, "launches": dict(launch), "unfulfilled": len(unfulfilled)}))
"""


def ray_python(given: str | None) -> str:
    if given:
        return given
    py = ROOT / "bench" / ".ray-venv" / "bin" / "python"
    if not py.exists():
        print("creating bench/.ray-venv with ray==2.60.0 ...", file=sys.stderr)
        subprocess.check_call([sys.executable, "-m", "venv", str(py.parent.parent)])
        subprocess.check_call([str(py), "-m", "pip", "install", "-q", "ray==2.60.0"])
    return str(py)


def run_ray(py: str, types, demand, nodes, groups=()) -> dict:
    scenario = {"types": {n: t.resources for n, t in types.items()}, "demand": demand,
                "running": [n.node_type for n in nodes], "groups": [(list(b), s) for b, s in groups]}
    out = subprocess.run([py, "-c", RAY_SCRIPT], input=json.dumps(scenario), capture_output=True, text=True,
                         timeout=900)
    if out.returncode != 0:
        raise SystemExit(f"ray planner failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ray-python")
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--ray-max-demands", type=int, default=10_000)
    ap.add_argument("--groups-only", action="store_true", help="only the placement group scenario")
    args = ap.parse_args()
    py = None if args.skip_ray else ray_python(args.ray_python)
    if args.groups_only:
        gangs(py)
        return

    header = (f"{'shapes':>7} {'types':>5} {'demands':>8} {'running':>7} | {'ours ms':>9} {'ray ms':>9} {'ray/ours':>8} | "
              f"{'ours $/h':>9} {'ray $/h':>9} {'MILP $/h':>9} {'':5} | {'ours gap':>8} {'ray gap':>8}")
    print(header)
    print("-" * len(header))
    worst_gap = 0.0
    mixes = [("even", SHAPES, n, total, r) for n in (5, 20) for total in (1_000, 10_000, 100_000) for r in (0, 1_000)]
    mixes += [("awkward", AWKWARD, n, total, 0) for n in (5, 20) for total in (1_000, 10_000)]
    for family, shape_set, n_types, total, n_running in mixes:
        types = node_types(n_types)
        demand = demands(total, shape_set)
        optimum, kind = milp_cost(types, demand)
        nodes = running_nodes(n_running, types)
        ours_s, ours = run_ours(types, demand, nodes)
        ours_cost = fleet_cost(ours, types)
        gap = ours_cost / optimum - 1
        worst_gap = max(worst_gap, gap)
        ray_ms = ray_cost = ray_gap = ratio = "-"
        if py and total <= args.ray_max_demands:
            r = run_ray(py, types, demand, nodes)
            ray_ms = f"{1000 * r['time_s']:.1f}"
            ratio = f"{r['time_s'] / ours_s:.0f}x"
            rc = fleet_cost(r["launches"], types)
            ray_cost, ray_gap = f"{rc:.2f}", f"{100 * (rc / optimum - 1):.1f}%"
        print(f"{family:>7} {n_types:>5} {total:>8} {n_running:>7} | {1000 * ours_s:>9.2f} {ray_ms:>9} {ratio:>8} | "
              f"{ours_cost:>9.2f} {ray_cost:>9} {optimum:>9.2f} {kind:5} | {100 * gap:>7.1f}% {ray_gap:>8}", flush=True)
    types = node_types(20)
    ours_s, ours = run_ours(types, demands(1_000_000), running_nodes(1_000, types))
    print(f"\n1,000,000 queued demands, 20 types, 1,000 running nodes: {1000 * ours_s:.1f} ms per decision, "
          f"fleet {fleet_cost(ours, types):.2f} $/h")
    print(f"worst gap of our fleet cost to the MILP optimum: {100 * worst_gap:.2f}% "
          "(exact: MILP over whole-node packing patterns; bound: aggregate capacity, a lower bound)")
    queue_demand()
    gangs(py)


def queue_demand() -> None:
    """What the head's scheduler reports as demand (the autoscaler's input) costs O(shapes), not O(items)."""
    from runtime.scheduler import Scheduler
    from runtime.work import Item

    s = Scheduler({"cpu": {"CPU": 4.0}, "gpu": {"CPU": 4.0, "GPU": 1.0}, "tpu": {"CPU": 4.0, "tpu": 1.0}})
    shapes = [{"CPU": 1.0}, {"GPU": 1.0}, {"CPU": 1.0, "tpu": 1.0}]
    for i in range(100_000):
        s.submit(Item(id=f"t{i}", kind="task", name="f", request=shapes[i % 3], max_retries=0, submitted_at=0.0), 0.0)
    t0 = time.perf_counter()
    for _ in range(100):
        s.demand()
    print(f"\nthe head's demand() with 100,000 queued items of 3 shapes: {(time.perf_counter() - t0) * 10:.3f} ms "
          "per call (the autoscaler asks once a tick)")


GROUP_SHAPES = [{"CPU": 1}, {"CPU": 2, "memory": 8 * GIB}, {"CPU": 4, "memory": 16 * GIB}, {"CPU": 4, "GPU": 1},
                {"CPU": 8, "GPU": 1}]


def random_groups(n: int, seed: int) -> list[tuple[list[dict], str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        strategy = rng.choice(["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"])
        shape = rng.choice(GROUP_SHAPES[:3] if strategy == "STRICT_PACK" else GROUP_SHAPES)
        size = rng.randint(2, 4 if strategy == "STRICT_PACK" else 16)
        out.append(([dict(shape) for _ in range(size)], strategy))
    return out


def as_placed(bundles: list[dict], strategy: str) -> list[dict]:
    """A STRICT_PACK group is one item (the sum of its bundles) wherever it goes."""
    if strategy != "STRICT_PACK":
        return bundles
    total: dict[str, float] = {}
    for b in bundles:
        for r, v in b.items():
            total[r] = total.get(r, 0.0) + v
    return [total]


def holds_everything(launches: dict[str, int], types, groups, demand) -> bool:
    """Place every group (strategy respected; the strictest first) and then every task on the launched
    nodes, each bundle or task on the node it leaves the least room on (best fit)."""
    nodes = [dict(types[t].resources) for t, k in sorted(launches.items()) for _ in range(k)]

    def fits(cap, b):
        return all(cap.get(r, 0.0) + 1e-9 >= v for r, v in b.items())

    def take(cap, b):
        for r, v in b.items():
            cap[r] = cap.get(r, 0.0) - v

    def slack(cap, b):
        return cap.get("GPU", 0.0) - b.get("GPU", 0.0), cap.get("CPU", 0.0) - b.get("CPU", 0.0)

    def size(b):
        return -b.get("GPU", 0.0), -b.get("CPU", 0.0)

    strictness = {"STRICT_SPREAD": 0, "STRICT_PACK": 1, "PACK": 2, "SPREAD": 2}
    for bundles, strategy in sorted(groups, key=lambda g: (strictness[g[1]], min(size(b) for b in g[0]), -len(g[0]))):
        used: set[int] = set()
        for b in sorted(as_placed(bundles, strategy), key=size):
            fitting = [i for i, cap in enumerate(nodes) if (strategy != "STRICT_SPREAD" or i not in used)
                       and fits(cap, b)]
            if not fitting:
                return False
            i = min(fitting, key=lambda i: slack(nodes[i], b))
            take(nodes[i], b)
            used.add(i)
    for shape, count in sorted(demand, key=lambda d: size(d[0])):
        for _ in range(count):
            fitting = [i for i, cap in enumerate(nodes) if fits(cap, shape)]
            if not fitting:
                return False
            take(nodes[min(fitting, key=lambda i: slack(nodes[i], shape))], shape)
    return True


def gangs(py: str | None) -> None:
    print("\nplacement groups: 1,000 pending groups of 2-16 bundles among 10,000 queued tasks, from zero")
    header = (f"{'types':>5} | {'ours ms':>8} {'ray ms':>8} | {'ours $/h':>9} {'ray $/h':>9} {'MILP >=':>9} | "
              f"{'ours gap':>8} {'ray gap':>8} | {'ours holds':>10} {'ray holds':>9}")
    print(header)
    print("-" * len(header))
    for n_types in (5, 20):
        types = node_types(n_types)
        groups = random_groups(1000, seed=n_types)
        demand = demands(10_000)
        inp = PlanInput(types, [], demand, Limits(max_workers=1_000_000, upscaling_speed=1e9),
                        groups=[GroupDemand(tuple(shape_of(b) for b in bundles), strategy) for bundles, strategy in groups])
        best, result = float("inf"), None
        for _ in range(3):
            t0 = time.perf_counter()
            result = plan(inp)
            best = min(best, time.perf_counter() - t0)
        assert not result.unmet_groups and not result.infeasible_groups, result.unmet_groups[:3]
        ours = fleet_cost(result.launches, types)
        items: dict = {}
        for bundles, strategy in groups:
            for b in as_placed(bundles, strategy):
                key = shape_of(b)
                items[key] = items.get(key, 0) + 1
        for shape, count in demand:
            items[shape_of(shape)] = items.get(shape_of(shape), 0) + count
        bound = _aggregate_bound(types, [(dict(k), c) for k, c in items.items()])
        ray_ms = ray_cost = ray_gap = ray_holds = "-"
        if py:
            r = run_ray(py, types, demand, [], groups)
            ray_ms = f"{1000 * r['time_s']:.0f}"
            rc = fleet_cost(r["launches"], types)
            ray_cost, ray_gap = f"{rc:.2f}", f"{100 * (rc / bound - 1):.1f}%"
            ray_holds = "yes" if holds_everything(r["launches"], types, groups, demand) else "NO"
        ours_holds = "yes" if holds_everything(result.launches, types, groups, demand) else "NO"
        print(f"{n_types:>5} | {1000 * best:>8.0f} {ray_ms:>8} | {ours:>9.2f} {ray_cost:>9} {bound:>9.2f} | "
              f"{100 * (ours / bound - 1):>7.1f}% {ray_gap:>8} | {ours_holds:>10} {ray_holds:>9}", flush=True)


if __name__ == "__main__":
    main()
