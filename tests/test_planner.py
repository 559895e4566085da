"""The autoscaler's planner, rule by rule, plus properties that must hold for any input."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.planner import Limits, NodeTypeSpec, NodeView, PlanInput, plan
from core.status import NodeStatus as S

CPU4 = NodeTypeSpec("cpu4", {"CPU": 4}, 0, 10, 0.20)
CPU16 = NodeTypeSpec("cpu16", {"CPU": 16}, 0, 10, 0.70)
GPU = NodeTypeSpec("gpu", {"CPU": 8, "GPU": 1}, 0, 4, 0.90)
SPOT = NodeTypeSpec("cpu4-spot", {"CPU": 4}, 0, 10, 0.06, spot=True)
TYPES = {t.name: t for t in (CPU4, CPU16, GPU)}
WIDE = Limits(max_workers=100, upscaling_speed=100)


def _plan(demand, nodes=(), types=TYPES, limits=WIDE, **kw):
    return plan(PlanInput(types, list(nodes), list(demand), limits, **kw))


def _node(id, type_, status="up-to-date", **kw):
    kw.setdefault("registered", status == "up-to-date")
    return NodeView(id=id, node_type=type_, status=status, **kw)


def test_cheapest_per_unit_of_demand():
    # 32 x {CPU:1}: two cpu16 ($1.40) beat eight cpu4 ($1.60), whatever the listing order
    p = _plan([({"CPU": 1}, 32)])
    assert p.launches == {"cpu16": 2}
    assert "32 x {CPU: 1}" in p.launch_reasons["cpu16"]


def test_tail_goes_to_the_smaller_type():
    p = _plan([({"CPU": 1}, 18)])
    assert p.launches == {"cpu16": 1, "cpu4": 1}


def test_free_and_pending_capacity_first():
    nodes = [_node("a", "cpu4", available={"CPU": 3}, total={"CPU": 4}), _node("b", "cpu16", status="setting-up")]
    assert _plan([({"CPU": 1}, 19)], nodes).launches == {}
    assert _plan([({"CPU": 1}, 20)], nodes).launches == {"cpu4": 1}


def test_gpu_nodes_kept_for_gpu_work():
    types = {"cpu4": CPU4, "gpu": NodeTypeSpec("gpu", {"CPU": 8, "GPU": 1}, 0, 4, 0.15)}  # GPU is even cheaper
    p = _plan([({"CPU": 1}, 8)], types=types)
    assert p.launches == {"cpu4": 2}
    p = _plan([({"CPU": 1}, 8), ({"GPU": 1}, 1)], types=types)
    assert p.launches == {"gpu": 1}  # the GPU node launched anyway takes the CPU work too
    only_gpu = {"gpu": types["gpu"]}
    assert _plan([({"CPU": 1}, 2)], types=only_gpu).launches == {"gpu": 1}  # nothing else fits


def test_spot_preferred_then_on_demand_while_spot_backs_off():
    types = {**TYPES, SPOT.name: SPOT}
    assert _plan([({"CPU": 1}, 8)], types=types).launches == {"cpu4-spot": 2}
    p = _plan([({"CPU": 1}, 8)], types=types, backoff_until={"cpu4-spot": 100.0}, now=50.0)
    assert p.launches == {"cpu4": 2}
    p = _plan([({"CPU": 1}, 8)], types=types, backoff_until={"cpu4-spot": 100.0}, now=150.0)  # backoff over
    assert p.launches == {"cpu4-spot": 2}


def test_all_fitting_types_backed_off_is_reported():
    p = _plan([({"GPU": 1}, 2)], backoff_until={"gpu": 10.0}, now=0.0)
    assert p.launches == {}
    assert p.unmet[0][1] == 2 and "backing off" in p.unmet[0][2] and "gpu" in p.unmet[0][2]


def test_infeasible_with_reason():
    p = _plan([({"GPU": 2}, 3), ({"CPU": 1}, 1)])
    assert p.infeasible == [((("GPU", 2.0),), 3, "no node type has {GPU: 2}")]
    assert p.launches == {"cpu4": 1}


def test_min_workers_and_max_workers_per_type():
    types = {"cpu4": NodeTypeSpec("cpu4", {"CPU": 4}, 2, 3, 0.2)}
    assert _plan([], types=types).launches == {"cpu4": 2}
    assert _plan([], types=types).launch_reasons["cpu4"].startswith("min_workers")
    p = _plan([({"CPU": 4}, 10)], types=types)
    assert p.launches == {"cpu4": 3}
    assert "max_workers" in p.unmet[0][2]


def test_global_max_workers_and_upscaling_speed():
    assert sum(_plan([({"CPU": 4}, 50)], limits=Limits(max_workers=3, upscaling_speed=100)).launches.values()) == 3
    # speed 1 with 2 nodes up: max(5, 1 x 2) new nodes at a time, minus those still launching
    nodes = [_node("h", "cpu4", is_head=True, available={"CPU": 0}), _node("a", "cpu4", available={"CPU": 0}),
             _node("b", "cpu4", status="pending")]
    p = _plan([({"CPU": 4}, 50)], nodes, limits=Limits(max_workers=100, upscaling_speed=1))
    assert sum(p.launches.values()) == 4


def test_budget():
    p = _plan([({"CPU": 16}, 5)], limits=Limits(max_workers=100, upscaling_speed=100, max_cost_per_hour=1.5))
    assert p.launches == {"cpu16": 2}
    assert "max_cost_per_hour" in p.unmet[0][2]


def test_idle_scale_down_least_useful_first_never_below_min_never_busy():
    types = {"cpu4": NodeTypeSpec("cpu4", {"CPU": 4}, 1, 10, 0.2), "cpu16": CPU16}
    lim = Limits(max_workers=10, idle_timeout_s=60)
    nodes = [
        _node("h", "cpu4", is_head=True, idle_since=1.0, available={"CPU": 4}),
        _node("a", "cpu4", idle_since=1.0, available={"CPU": 4}),
        _node("b", "cpu4", idle_since=1.0, available={"CPU": 4}),
        _node("c", "cpu16", idle_since=1.0, available={"CPU": 16}),
        _node("d", "cpu16", idle_since=90.0, available={"CPU": 16}),  # idle only 10 s
        _node("e", "cpu16", running=2, idle_since=0.0, available={"CPU": 14}),  # busy
    ]
    p = _plan([], nodes, types=types, limits=lim, now=100.0)
    assert [t for t, _ in p.terminations] == ["c", "a"]  # the expensive one first; one cpu4 stays (min 1)
    assert all("idle for" in why for _, why in p.terminations)


def test_a_node_types_own_idle_timeout_overrides_the_clusters():
    """Ray's available_node_types.X.idle_timeout_s."""
    types = {"cpu4": NodeTypeSpec("cpu4", {"CPU": 4}, 0, 10, 0.2, idle_timeout_s=5),
             "cpu16": NodeTypeSpec("cpu16", {"CPU": 16}, 0, 10, 0.7, idle_timeout_s=3600)}
    nodes = [_node("a", "cpu4", idle_since=90.0, available={"CPU": 4}),       # idle 10 s > its 5 s
             _node("c", "cpu16", idle_since=1.0, available={"CPU": 16})]      # idle 99 s < its hour
    p = _plan([], nodes, types=types, limits=Limits(max_workers=10, idle_timeout_s=60), now=100.0)
    assert [t for t, _ in p.terminations] == ["a"]


def test_priority_orders_equal_cost_choices_only():
    """Ray's available_node_types.X.priority: a tie-break, never a reason to pay more."""
    low = NodeTypeSpec("a-low", {"CPU": 4}, 0, 10, 0.2, priority=0)
    high = NodeTypeSpec("z-high", {"CPU": 4}, 0, 10, 0.2, priority=5)
    assert _plan([({"CPU": 1}, 4)], types={t.name: t for t in (low, high)}).launches == {"z-high": 1}
    dear = NodeTypeSpec("z-high", {"CPU": 4}, 0, 10, 0.3, priority=5)
    assert _plan([({"CPU": 1}, 4)], types={t.name: t for t in (low, dear)}).launches == {"a-low": 1}


def test_idle_node_that_fits_waiting_work_is_kept():
    nodes = [_node("a", "cpu4", idle_since=1.0, available={"CPU": 4})]
    p = _plan([({"CPU": 2}, 1)], nodes, limits=Limits(max_workers=10, idle_timeout_s=10), now=100.0)
    assert p.terminations == [] and p.launches == {}


def test_outdated_replaced_idle_drained_busy():
    nodes = [_node("a", "cpu4", outdated=True, idle_since=5.0, available={"CPU": 4}),
             _node("b", "cpu4", outdated=True, running=1, available={"CPU": 3})]
    types = {"cpu4": NodeTypeSpec("cpu4", {"CPU": 4}, 2, 10, 0.2)}
    p = _plan([], nodes, types=types, now=10.0)
    assert p.terminations == [("a", "outdated node config: replacing it")]
    assert p.drains == [("b", "outdated node config: replacing it: draining first")]
    assert p.launches == {"cpu4": 1}  # the replacement of a keeps min_workers


def test_stuck_and_failed_nodes_replaced():
    types = {"cpu4": NodeTypeSpec("cpu4", {"CPU": 4}, 2, 10, 0.2)}
    nodes = [_node("a", "cpu4", status="setting-up", launched_at=0.0),
             _node("b", "cpu4", status="update-failed", launched_at=900.0)]
    p = _plan([], nodes, types=types, limits=Limits(max_workers=10, launch_timeout_s=600), now=1000.0)
    assert sorted(p.terminations) == [("a", "stuck in setting-up for 17 min"), ("b", "setup failed: replacing it")]
    assert p.launches == {"cpu4": 2}


def test_instance_unknown_to_the_runtime_past_grace_is_terminated():
    nodes = [NodeView("x", "cpu4", "up-to-date", registered=False, lost_for=30.0),
             NodeView("y", "cpu4", "up-to-date", registered=False, lost_for=120.0)]
    p = _plan([], nodes, limits=Limits(max_workers=10, runtime_grace_s=60))
    assert p.terminations == [("y", "unknown to the runtime for 120 s")]


def test_a_static_cluster_keeps_its_nodes_for_up_to_repair_and_replaces_only_outdated_ones():
    types = {"cpu4": NodeTypeSpec("cpu4", {"CPU": 4}, 0, 10, 0.2)}
    nodes = [_node("failed", "cpu4", status="update-failed", launched_at=0.0),
             _node("stuck", "cpu4", status="setting-up", launched_at=0.0),
             _node("lost", "cpu4", registered=False, lost_for=999.0),
             _node("idle", "cpu4", idle_since=1.0, available={"CPU": 4}),
             _node("old", "cpu4", outdated=True, idle_since=1.0, available={"CPU": 4}),
             _node("gone", "removed-type", idle_since=1.0)]
    limits = Limits(max_workers=10, idle_timeout_s=0, launch_timeout_s=60, runtime_grace_s=60)
    autoscaled = _plan([], nodes, types=types, limits=limits, now=1000.0)
    assert {i for i, _ in autoscaled.terminations} == {"failed", "stuck", "lost", "idle", "old", "gone"}
    static = _plan([], nodes, types=types, limits=dataclasses.replace(limits, static=True), now=1000.0)
    assert sorted(static.terminations) == [("gone", "node type removed-type is no longer in the config"),
                                           ("old", "outdated node config: replacing it")]
    assert static.launches == {}
    types = {"cpu4": NodeTypeSpec("cpu4", {"CPU": 4}, 3, 10, 0.2)}
    short = _plan([], [], types=types, limits=dataclasses.replace(limits, static=True))
    assert short.launches == {"cpu4": 3} and short.launch_reasons == {"cpu4": "min_workers"}


def test_drained_node_terminated_and_head_never():
    nodes = [_node("h", "cpu4", is_head=True, status="up-to-date", idle_since=1.0),
             _node("d", "cpu4", status="draining", running=0)]
    p = _plan([], nodes, limits=Limits(max_workers=10, idle_timeout_s=0), now=100.0)
    assert p.terminations == [("d", "drained")]


def test_deterministic_and_fast_for_a_million_items():
    demand = [({"CPU": 1}, 600_000), ({"CPU": 2, "memory": 2**32}, 300_000), ({"GPU": 1}, 100_000)]
    types = {**TYPES, "mem": NodeTypeSpec("mem", {"CPU": 8, "memory": 2**36}, 0, 10_000, 0.5)}
    a = _plan(demand, types=types, limits=Limits(max_workers=200_000, upscaling_speed=1e9))
    b = _plan(demand, types=types, limits=Limits(max_workers=200_000, upscaling_speed=1e9))
    assert a == b and sum(a.launches.values()) > 0


# --- properties -----------------------------------------------------------------------------------

shapes = st.sampled_from([{"CPU": 1}, {"CPU": 2}, {"CPU": 4}, {"GPU": 1}, {"CPU": 1, "GPU": 1}, {"CPU": 8}])
node_st = st.builds(
    lambda i, t, busy, idle, status: NodeView(
        id=f"n{i}", node_type=t, status=status, registered=status == "up-to-date", running=busy,
        idle_since=0.0 if busy else idle, available=dict(TYPES[t].resources), total=dict(TYPES[t].resources)),
    st.integers(0, 10_000), st.sampled_from(sorted(TYPES)), st.integers(0, 3), st.floats(0, 1000),
    st.sampled_from(["up-to-date", "pending", "setting-up", "draining", "update-failed"]))


@settings(max_examples=200, deadline=None)
@given(demand=st.lists(st.tuples(shapes, st.integers(1, 500)), max_size=6),
       nodes=st.lists(node_st, max_size=12, unique_by=lambda n: n.id),
       max_workers=st.integers(0, 30), speed=st.floats(0.1, 10), budget=st.one_of(st.none(), st.floats(0.1, 20)),
       now=st.floats(0, 5000))
def test_plan_never_exceeds_a_limit_and_never_terminates_a_busy_node(demand, nodes, max_workers, speed, budget, now):
    lim = Limits(max_workers=max_workers, upscaling_speed=speed, idle_timeout_s=60, max_cost_per_hour=budget)
    p = _plan(demand, nodes, limits=lim, now=now)
    by_id = {n.id: n for n in nodes}
    for node_id, _why in p.terminations:
        assert by_id[node_id].running == 0, "terminated a node running work"
        assert not by_id[node_id].is_head
    gone = {i for i, _ in p.terminations}
    staying = [n for n in nodes if n.id not in gone and n.status != "terminating" and not n.is_head]
    assert len(staying) + sum(p.launches.values()) <= max(max_workers, len(staying))
    for t, k in p.launches.items():
        assert k > 0
        assert sum(1 for n in staying if n.node_type == t) + k <= TYPES[t].max_workers
    if budget is not None and p.launches:
        cost = sum(TYPES[n.node_type].cost_per_hour for n in staying) + sum(
            TYPES[t].cost_per_hour * k for t, k in p.launches.items())
        assert cost <= budget + 1e-6


# --- regressions of issue 9 ------------------------------------------------------------------------


def test_a_draining_node_is_no_capacity():
    # a node being retired (status draining) has CPUs free, yet queued work must get a new node
    busy_out = _node("d", "cpu4", status="draining", registered=True, available={"CPU": 3}, total={"CPU": 4}, running=1)
    p = _plan([({"CPU": 1}, 2)], [busy_out])
    assert p.launches == {"cpu4": 1} and p.undrains == []


def test_a_node_drained_for_idleness_is_taken_back_when_work_waits():
    # the terminate found it busy, so the runtime drained it while its status stayed up-to-date: the
    # deferred drain used to block every launch with nothing said
    drained = _node("i", "cpu4", available={"CPU": 4}, total={"CPU": 4}, draining=True, idle_since=1.0)
    p = _plan([({"CPU": 1}, 3)], [drained], now=2.0)
    assert p.undrains == [("i", "work is waiting that it can run")] and p.launches == {}
    # with no work waiting it stays drained and is no capacity for anything
    assert _plan([], [drained], now=2.0).undrains == []


def test_stuck_counts_from_the_status_not_the_launch():
    # an old node that entered setting-up a minute ago (a new autoscaler adopted it) is not stuck
    old = _node("o", "cpu4", status="setting-up", launched_at=0.0, status_since=3540.0)
    lim = Limits(max_workers=10, upscaling_speed=10, launch_timeout_s=600)
    assert _plan([], [old], limits=lim, now=3600.0).terminations == []
    stuck = _node("s", "cpu4", status="setting-up", launched_at=0.0, status_since=100.0)
    assert [i for i, _ in _plan([], [stuck], limits=lim, now=3600.0).terminations] == ["s"]


def test_a_type_of_unknown_resources_is_feasible_for_cpu_work_as_in_the_runtime():
    from runtime.scheduler import Scheduler

    unknown = NodeTypeSpec("pool", {}, 0, 3, 0.1)
    p = _plan([({"CPU": 2}, 1)], types={"pool": unknown})
    assert p.infeasible == [] and p.launches == {"pool": 1}
    # and the runtime agrees: the same work is queued, not infeasible, for the same node type
    assert Scheduler({"pool": {}}).infeasible_reason({"CPU": 2}) is None
    gpu_work = _plan([({"GPU": 1}, 1)], types={"pool": unknown})
    assert gpu_work.infeasible and Scheduler({"pool": {}}).infeasible_reason({"GPU": 1})


@settings(max_examples=200, deadline=None)
@given(types=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.dictionaries(
           st.sampled_from(["CPU", "GPU", "memory", "tpu"]), st.floats(0, 8, allow_nan=False), max_size=3),
           min_size=1, max_size=3),
       request=st.dictionaries(st.sampled_from(["CPU", "GPU", "memory", "tpu"]), st.floats(0.5, 8), min_size=1,
                               max_size=3))
def test_planner_and_runtime_judge_feasibility_alike(types, request):
    from runtime.scheduler import Scheduler

    specs = {n: NodeTypeSpec(n, r, 0, 5, 0.1) for n, r in types.items()}
    planner_says = not _plan([(request, 1)], types=specs).infeasible
    runtime_says = Scheduler(types).infeasible_reason(request) is None
    assert planner_says == runtime_says


def test_an_illegal_status_change_is_an_error_that_names_both_statuses():
    import pytest

    from core.status import InvalidTransition, status_tags

    with pytest.raises(InvalidTransition, match="from terminating to up-to-date"):
        status_tags("terminating", S.UP_TO_DATE, 1.0)
    assert status_tags("setting-up", S.UP_TO_DATE, 2.5) == {"launch-status": "up-to-date",
                                                             "launch-status-since": "2.500"}


def test_a_busy_node_that_lists_no_free_cpu_is_no_capacity():
    # a registered node's free resources are known: a missing CPU entry is none free, not "unknown"
    busy = _node("b", "cpu4", available={}, total={"CPU": 4}, running=4)
    assert _plan([({"CPU": 1}, 5)], [busy]).launches == {"cpu4": 2}


def test_a_node_being_preempted_is_no_capacity_and_its_replacement_may_come_before_it_goes():
    """Its cloud gave notice: the runtime drained it and counts its running work as demand again. The
    planner launches the replacement now, even at max_workers (the node is going), and never takes the
    node back for waiting work."""
    types = {"gpu": NodeTypeSpec("gpu", {"CPU": 4, "GPU": 1}, 0, 1, 1.0, spot=True)}
    going = NodeView(id="i-1", node_type="gpu", status="up-to-date", registered=True, total={"CPU": 4, "GPU": 1},
                     available={"CPU": 4, "GPU": 1}, running=1, draining=True, preempting=True)
    p = plan(PlanInput(types, [going], [({"CPU": 1, "GPU": 1}, 1)], Limits(max_workers=1), now=100.0))
    assert p.launches == {"gpu": 1} and not p.undrains
    # without the notice the same drained node, up to date and free, would be taken back for the work
    idle = NodeView(id="i-1", node_type="gpu", status="up-to-date", registered=True, total={"CPU": 4, "GPU": 1},
                    available={"CPU": 4, "GPU": 1}, running=0, draining=True)
    p = plan(PlanInput(types, [idle], [({"CPU": 1, "GPU": 1}, 1)], Limits(max_workers=1), now=100.0))
    assert p.undrains and not p.launches
