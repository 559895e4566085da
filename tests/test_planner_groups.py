"""The planner's rules for placement groups (gang demand): whole or nothing, strategy respected, cheapest."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.planner import GroupDemand, Limits, NodeTypeSpec, NodeView, PlanInput, plan, shape_of

CPU4 = NodeTypeSpec("cpu4", {"CPU": 4}, 0, 10, 0.20)
CPU16 = NodeTypeSpec("cpu16", {"CPU": 16}, 0, 10, 0.70)
GPU = NodeTypeSpec("gpu", {"CPU": 8, "GPU": 1}, 0, 8, 0.90)
GPU4 = NodeTypeSpec("gpu4", {"CPU": 32, "GPU": 4}, 0, 4, 3.00)
TYPES = {t.name: t for t in (CPU4, CPU16, GPU, GPU4)}
WIDE = Limits(max_workers=100, upscaling_speed=100)


def group(strategy, *bundles, count=1) -> GroupDemand:
    return GroupDemand(tuple(shape_of(b) for b in bundles), strategy, count)


def _plan(groups, demand=(), nodes=(), limits=WIDE, types=TYPES):
    return plan(PlanInput(types, list(nodes), list(demand), limits, groups=list(groups)))


def test_strict_spread_gets_a_node_per_bundle_from_zero():
    p = _plan([group("STRICT_SPREAD", *[{"GPU": 1}] * 4)])
    assert p.launches == {"gpu": 4}  # four 1-GPU nodes ($3.60), not one gpu4 ($3.00): the strategy forbids it
    assert not p.unmet_groups


def test_pack_takes_the_cheapest_set_that_holds_the_group():
    assert _plan([group("PACK", *[{"GPU": 1}] * 4)]).launches == {"gpu4": 1}
    assert _plan([group("PACK", *[{"CPU": 4}] * 4)]).launches == {"cpu16": 1}  # $0.70, not 4 x cpu4 $0.80
    assert _plan([group("STRICT_PACK", {"CPU": 2}, {"CPU": 2})]).launches == {"cpu4": 1}


def test_strict_pack_needs_one_node_for_the_sum_or_is_infeasible():
    cpu_only = {t.name: t for t in (CPU4, CPU16)}
    p = _plan([group("STRICT_PACK", {"CPU": 12}, {"CPU": 12})], types=cpu_only)
    assert not p.launches and "STRICT_PACK" in p.infeasible_groups[0][2]
    # the same bundles packed loosely fit two nodes
    assert _plan([group("PACK", {"CPU": 12}, {"CPU": 12})], types=cpu_only).launches == {"cpu16": 2}


def test_a_bundle_no_type_has_is_infeasible_and_launches_nothing():
    p = _plan([group("PACK", {"CPU": 1}, {"GPU": 8})])
    assert not p.launches
    assert p.infeasible_groups == [("PACK group of 1 x {CPU: 1} + 1 x {GPU: 8}", 1, "bundle 1: no node type has {GPU: 8}")]


def test_all_or_nothing_under_max_workers_with_the_reason():
    p = _plan([group("STRICT_SPREAD", *[{"GPU": 1}] * 5)], limits=Limits(max_workers=4, upscaling_speed=100))
    assert not p.launches
    (_, count, why), = p.unmet_groups
    assert count == 1 and "needs 5 new node(s) at once" in why and "max_workers (4)" in why


def test_all_or_nothing_under_a_types_max_and_the_budget():
    p = _plan([group("STRICT_SPREAD", *[{"GPU": 1}] * 9)])  # gpu: max 8; gpu4 is not cheaper per bundle
    assert not p.launches and "over its max_workers (8)" in p.unmet_groups[0][2]
    p = _plan([group("STRICT_SPREAD", *[{"GPU": 1}] * 4)],
              limits=Limits(max_workers=100, upscaling_speed=100, max_cost_per_hour=3.0))
    assert not p.launches and "max_cost_per_hour" in p.unmet_groups[0][2]


def test_groups_use_free_and_launching_capacity_first():
    free = NodeView("n1", "cpu16", "up-to-date", registered=True, total={"CPU": 16}, available={"CPU": 8})
    # one bundle on the free node, the other needs a node of its own
    assert _plan([group("STRICT_SPREAD", {"CPU": 4}, {"CPU": 4})], nodes=[free]).launches == {"cpu4": 1}
    launching = NodeView("n2", "gpu4", "setting-up")
    assert _plan([group("PACK", *[{"GPU": 1}] * 4)], nodes=[launching]).launches == {}


def test_tasks_fill_what_group_nodes_leave_free():
    p = _plan([group("STRICT_PACK", {"CPU": 12})], demand=[({"CPU": 1}, 4)])
    assert p.launches == {"cpu16": 1}


def test_identical_groups_are_planned_each_whole():
    p = _plan([group("STRICT_SPREAD", {"GPU": 1}, {"GPU": 1}, count=3)])
    assert p.launches == {"gpu": 6}
    one_gpu = {t.name: t for t in (CPU4, GPU)}
    p = _plan([group("STRICT_SPREAD", {"GPU": 1}, {"GPU": 1}, count=5)], types=one_gpu)
    assert p.launches == {"gpu": 8} and p.unmet_groups[0][1] == 1  # gpu max 8: four groups, not 4.5


def test_a_thousand_groups_among_ten_thousand_tasks_are_all_planned():
    import random

    rng = random.Random(3)
    shapes = [{"CPU": 1}, {"CPU": 2}, {"CPU": 4}, {"GPU": 1}, {"CPU": 4, "GPU": 1}]
    groups = [group(rng.choice(["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]),
                    *[rng.choice(shapes[:3]) for _ in range(rng.randint(2, 4))]) for _ in range(1000)]
    limits = Limits(max_workers=100_000, upscaling_speed=100_000)
    types = {t.name: NodeTypeSpec(t.name, t.resources, 0, 100_000, t.cost_per_hour) for t in TYPES.values()}
    p = _plan(groups, demand=[({"CPU": 1}, 10_000)], limits=limits, types=types)
    assert p.launches and not p.unmet_groups and not p.unmet  # (its speed: bench/planner.py)


# --- properties ------------------------------------------------------------------------------------

def _holds(g: GroupDemand, nodes: list[dict[str, float]]) -> bool:
    """An independent check by brute force: can these node capacities hold the group, strategy respected?"""
    bundles = [dict(b) for b in g.bundles]
    if g.strategy == "STRICT_PACK":
        total: dict[str, float] = {}
        for b in bundles:
            for k, v in b.items():
                total[k] = total.get(k, 0.0) + v
        return any(all(n.get(k, 0.0) + 1e-9 >= v for k, v in total.items()) for n in nodes)
    for assignment in itertools.product(range(len(nodes)), repeat=len(bundles)):
        if g.strategy == "STRICT_SPREAD" and len(set(assignment)) < len(bundles):
            continue
        left = [dict(n) for n in nodes]
        ok = True
        for b, i in zip(bundles, assignment):
            for k, v in b.items():
                left[i][k] = left[i].get(k, 0.0) - v
                ok = ok and left[i][k] >= -1e-9
        if ok:
            return True
    return False


bundle_st = st.sampled_from([{"CPU": 1}, {"CPU": 4}, {"CPU": 8}, {"GPU": 1}, {"CPU": 4, "GPU": 1}, {"CPU": 12}])


@settings(max_examples=150, deadline=None)
@given(bundles=st.lists(bundle_st, min_size=1, max_size=4),
       strategy=st.sampled_from(["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]),
       max_workers=st.integers(0, 6), budget=st.one_of(st.none(), st.floats(0.1, 10)))
def test_a_group_gets_nodes_that_hold_it_whole_or_none(bundles, strategy, max_workers, budget):
    g = group(strategy, *bundles)
    lim = Limits(max_workers=max_workers, upscaling_speed=100, max_cost_per_hour=budget)
    p = _plan([g], limits=lim)
    launched = [dict(TYPES[t].resources) for t, k in p.launches.items() for _ in range(k)]
    assert sum(p.launches.values()) <= max_workers
    if budget is not None:
        assert sum(TYPES[t].cost_per_hour * k for t, k in p.launches.items()) <= budget + 1e-6
    for t, k in p.launches.items():
        assert k <= TYPES[t].max_workers
    if p.launches:
        assert _holds(g, launched) and not p.unmet_groups and not p.infeasible_groups
    else:  # nothing launched: it says why
        assert p.unmet_groups or p.infeasible_groups
    if p.infeasible_groups:  # only when truly no set of node types could hold it
        def fits_a_type(b: dict) -> bool:
            return any(all(t.resources.get(k, 0.0) >= v for k, v in b.items()) for t in TYPES.values())

        total: dict[str, float] = {}
        for b in bundles:
            for k, v in b.items():
                total[k] = total.get(k, 0.0) + v
        assert not all(fits_a_type(b) for b in bundles) or (strategy == "STRICT_PACK" and not fits_a_type(total))
