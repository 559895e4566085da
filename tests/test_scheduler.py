"""The scheduler's rules, as a pure data structure (no processes, no clock)."""

from __future__ import annotations


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.scheduler import Scheduler
from runtime.work import CANCELLED, FAILED, FINISHED, INFEASIBLE, QUEUED, RUNNING, InvalidRequest, Item

TYPES = {"cpu": {"CPU": 4}, "gpu": {"CPU": 8, "GPU": 2}, "tpu": {"CPU": 1, "tpu": 1}}


def _item(s: Scheduler, request, retries=0, deps=()):
    it = Item(id=s.new_id("task"), kind="task", name="t", request=request, max_retries=retries,
              submitted_at=0.0, depends_on=set(deps))
    s.submit(it, 0.0)
    return it


def _sched():
    s = Scheduler(TYPES)
    s.add_node("c1", "cpu", {"CPU": 4}, False, 0.0)
    s.add_node("g1", "gpu", {"CPU": 8, "GPU": 2}, False, 0.0)
    return s


def test_cpu_work_avoids_gpu_nodes_until_cpu_nodes_are_full():
    s = _sched()
    items = [_item(s, {"CPU": 1}) for _ in range(6)]
    s.schedule(0.0)
    nodes = [i.node_id for i in items]
    assert nodes[:4] == ["c1"] * 4 and nodes[4:] == ["g1", "g1"]


def test_gpu_fractions_pack_and_whole_gpus_stay_exclusive():
    s = _sched()
    halves = [_item(s, {"GPU": 0.5}) for _ in range(3)]
    s.schedule(0.0)
    assert sorted(i.gpu_ids[0] for i in halves) == ["0", "0", "1"]
    whole = _item(s, {"GPU": 1})
    s.schedule(0.0)
    assert whole.state == QUEUED  # no GPU is entirely free now
    s.complete(halves[2].id, FINISHED, 1.0)
    s.schedule(1.0)
    assert whole.state == RUNNING and whole.gpu_ids == ["1"]


def test_fractional_gpu_above_one_is_rejected():
    with pytest.raises(InvalidRequest, match="whole number"):
        _item(_sched(), {"GPU": 1.5})


def test_infeasible_with_reason_until_a_bigger_node_registers():
    s = _sched()
    it = _item(s, {"GPU": 4})
    assert it.state == INFEASIBLE and "GPU: 4" in it.message
    assert s.infeasible_demand() == [((("GPU", 4.0),), 1, it.message)]
    s.add_node("g8", "gpu", {"CPU": 8, "GPU": 8}, False, 0.0)  # e.g. detected GPUs beyond the declared
    assert it.state == QUEUED
    s.schedule(0.0)
    assert it.state == RUNNING and it.node_id == "g8"


def test_feasible_by_node_type_even_with_no_node_of_it():
    s = Scheduler(TYPES)
    it = _item(s, {"tpu": 1})
    assert it.state == QUEUED and s.demand() == [((("tpu", 1.0),), 1)]
    # every type declares its CPUs, so 64 CPUs fit none of them...
    assert _item(s, {"CPU": 64}).state == INFEASIBLE
    # ...but a type that leaves CPU undeclared is sized at runtime, so it might
    s2 = Scheduler({**TYPES, "auto": {"tpu": 1}})
    assert _item(s2, {"CPU": 64, "tpu": 1}).state == QUEUED


def test_node_death_requeues_until_retries_run_out():
    s = _sched()
    a = _item(s, {"CPU": 4}, retries=1)
    s.schedule(0.0)
    assert a.node_id == "c1"
    s.remove_node("c1", 1.0)
    assert a.state == QUEUED and a.attempt == 1
    s.schedule(1.0)
    assert a.node_id == "g1"
    s.remove_node("g1", 2.0)
    assert a.state == FAILED and "no retries are left" in a.message


def test_work_of_a_node_preempted_after_a_notice_is_demand_at_once_and_costs_no_retry():
    s = _sched()
    a = _item(s, {"CPU": 4}, retries=0)
    s.schedule(0.0)
    assert a.node_id == "c1" and s.demand() == []
    s.drain("c1")
    s.preempting.add("c1")  # (the head, on the notice its heartbeat carried)
    assert s.demand() == [((("CPU", 4.0),), 1)]  # a replacement for it, while it still runs
    s.remove_node("c1", 1.0)  # gone at the deadline
    assert a.state == QUEUED and "preempted" not in a.message and "c1" not in s.preempting
    s.schedule(1.0)
    assert a.node_id == "g1"  # no retries were left, and it was not one of them
    s.remove_node("g1", 2.0)  # a death without notice counts
    assert a.state == FAILED and "no retries are left" in a.message


def test_work_a_preempted_node_reports_lost_before_it_goes_costs_no_retry():
    """A job ended by the notice's SIGTERM is reported lost by its node: requeued, not one of its retries."""
    s = _sched()
    a = _item(s, {"CPU": 4}, retries=0)
    s.schedule(0.0)
    s.drain("c1")
    s.preempting.add("c1")
    s.complete(a.id, "lost", 1.0, exit_code=143, message="its node is being preempted", node_id="c1")
    assert a.state == QUEUED and a.attempt == 1
    s.schedule(1.0)
    assert a.node_id == "g1"
    s.complete(a.id, "lost", 2.0, message="its process died", node_id="g1")  # not preempted: it counts
    assert a.state == FAILED and "no retries are left" in a.message


def test_lost_process_is_retried_like_a_dead_node():
    s = _sched()
    a = _item(s, {"CPU": 1}, retries=1)
    s.schedule(0.0)
    s.complete(a.id, "lost", 1.0, message="its worker process died (-9)")
    assert a.state == QUEUED and a.attempt == 1 and s.nodes["c1"].available["CPU"] == 4
    s.schedule(1.0)
    s.complete(a.id, "lost", 2.0, message="its worker process died (-9)")
    assert a.state == FAILED and "worker process died" in a.message


def test_drained_node_gets_no_new_work():
    s = _sched()
    running = _item(s, {"CPU": 1})
    s.schedule(0.0)
    assert s.drain("c1") == (False, 1)
    later = _item(s, {"CPU": 1})
    s.schedule(0.0)
    assert later.node_id == "g1"
    s.complete(running.id, FINISHED, 1.0)
    assert s.drain("c1") == (True, 0)
    assert s.nodes["c1"].idle_since == 1.0


def test_dependencies_block_then_release_or_fail():
    s = _sched()
    a = _item(s, {"CPU": 1})
    b = _item(s, {"CPU": 1}, deps=[a.id])
    c = _item(s, {"CPU": 1}, deps=[b.id])
    assert b.state == "blocked" and c.state == "blocked"
    s.schedule(0.0)
    s.complete(a.id, FAILED, 1.0)
    assert b.state == FAILED and c.state == FAILED and a.id in b.message


def test_cancel_queued_and_running():
    s = Scheduler(TYPES)
    s.add_node("c1", "cpu", {"CPU": 1}, False, 0.0)
    a, b = _item(s, {"CPU": 1}), _item(s, {"CPU": 1})
    s.schedule(0.0)
    assert s.cancel(b.id, 0.0) == (CANCELLED, None)
    assert s.demand() == []
    assert s.cancel(a.id, 0.0) == (RUNNING, "c1")  # the agent is told; it reports cancelled
    s.complete(a.id, CANCELLED, 1.0)
    assert a.state == CANCELLED and s.nodes["c1"].available["CPU"] == 1


def test_demand_of_100k_items_is_cheap():
    s = Scheduler(TYPES)
    for i in range(100_000):
        _item(s, [{"CPU": 1}, {"GPU": 1}, {"CPU": 1, "tpu": 1}][i % 3])
    # (its cost per call, O(shapes), is measured in bench/planner.py)
    assert sorted(c for _, c in s.demand()) == [33333, 33333, 33334]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 0.5, 1, 2]), st.sampled_from([0, 1, 2, 4])), max_size=40),
       st.lists(st.integers(0, 39), max_size=20))
def test_never_over_allocated(requests, finish_order):
    s = _sched()
    items = [_item(s, {k: v for k, v in (("GPU", g), ("CPU", c)) if v}) for g, c in requests]
    s.schedule(0.0)
    for idx in finish_order:
        if idx < len(items) and items[idx].state == RUNNING:
            s.complete(items[idx].id, FINISHED, 1.0)
            s.schedule(1.0)
        for n in s.nodes.values():
            assert all(v >= -1e-9 for v in n.available.values())
            assert all(-1e-9 <= f <= 1 + 1e-9 for f in n.gpu_free.values())
            used = sum(s.items[i].request.get("CPU", 0) for i in n.running)
            assert used <= n.total["CPU"] + 1e-9


OPS = st.lists(st.tuples(st.sampled_from(["submit", "finish", "drain", "undrain", "add", "remove"]),
                         st.integers(0, 30), st.sampled_from([0.5, 1, 2, 3])), max_size=60)


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_no_work_that_fits_a_node_is_left_queued(ops):
    """However nodes come, go, drain and free room, a pass leaves no queued item that some node could take
    (the pass that tries a long queue only on the nodes that got room back misses none)."""
    s = _sched()
    names = ["c1", "g1"]
    now = 0.0
    for op, k, cpus in ops:
        now += 1.0
        running = [i for i in s.items.values() if i.state == RUNNING]
        if op == "submit":
            for _ in range(k % 5 + 1):
                _item(s, {"CPU": cpus})
        elif op == "finish" and running:
            item = running[k % len(running)]
            s.complete(item.id, FINISHED, now, node_id=item.node_id)
        elif op in ("drain", "undrain") and s.nodes:
            s.drain(sorted(s.nodes)[k % len(s.nodes)], undrain=op == "undrain")
        elif op == "add":
            names.append(f"n{len(names)}")
            s.add_node(names[-1], "cpu", {"CPU": 4}, False, now)
        elif op == "remove" and len(s.nodes) > 1:
            s.remove_node(sorted(s.nodes)[k % len(s.nodes)], now)
        s.schedule(now)
        for item in s.items.values():
            if item.state == QUEUED:
                assert not [n.id for n in s.nodes.values() if not n.draining and n.fits(item.request)], item


def test_a_task_waiting_in_get_lends_its_cpus_and_takes_them_back():
    s = Scheduler(TYPES)
    s.add_node("c1", "cpu", {"CPU": 2}, False, 0.0)
    parents = [_item(s, {"CPU": 1}) for _ in range(2)]
    s.schedule(0.0)
    child = _item(s, {"CPU": 1})
    assert s.schedule(0.0) == [] and child.state == QUEUED  # both CPUs held by the parents
    assert s.lend_cpu(parents[0].id) == "c1" and s.lend_cpu(parents[0].id) is None  # once
    assert s.schedule(0.0) == [child] and child.node_id == "c1"
    s.complete(child.id, FINISHED, 1.0, node_id="c1")
    other = _item(s, {"CPU": 1})
    assert s.schedule(1.0) == [other]  # the lent CPU serves whatever waits
    assert s.take_back_cpu(parents[0].id) == "c1"
    assert s.nodes["c1"].available["CPU"] == -1.0  # over, for a while, as in Ray: nothing new starts
    assert s.schedule(1.0) == [] and _item(s, {"CPU": 1}).state == QUEUED
    s.complete(other.id, FINISHED, 2.0, node_id="c1")
    assert s.nodes["c1"].available["CPU"] == 0.0
    # a parent that finishes while lending gives back only what it still holds
    s.lend_cpu(parents[1].id)
    s.schedule(2.0)
    s.complete(parents[1].id, FINISHED, 3.0, node_id="c1")
    s.complete(parents[0].id, FINISHED, 3.0, node_id="c1")
    s.take_back_cpu(parents[1].id)  # its get returned after it was done: nothing to take
    running = [i for i in s.items.values() if i.state == RUNNING]
    assert s.nodes["c1"].available["CPU"] == 2.0 - len(running)
