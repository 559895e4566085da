"""The scheduler's rules for actors and placement groups, as a pure data structure (no processes)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.scheduler import Scheduler
from runtime.work import ACTOR, CALL, CANCELLED, FAILED, FINISHED, PG, QUEUED, RUNNING, Item, bundle_sum

TYPES = {"cpu": {"CPU": 4}, "gpu": {"CPU": 8, "GPU": 2}}


def _sched(*nodes):
    s = Scheduler(TYPES)
    for node_id, node_type in nodes or (("c1", "cpu"), ("c2", "cpu"), ("g1", "gpu")):
        s.add_node(node_id, node_type, dict(TYPES[node_type]), False, 0.0)
    return s


_n = [0]


def _submit(s, kind, request=None, retries=0, **kw) -> Item:
    _n[0] += 1
    it = Item(id=f"{kind}-{_n[0]}", kind=kind, name=kind, request=request or {}, max_retries=retries,
              submitted_at=0.0, **kw)
    if kind == PG:
        it.request = bundle_sum(it.bundles)
    s.submit(it, 0.0)
    return it


def _call(s, actor, retries=0, deps=()) -> Item:
    return _submit(s, CALL, retries=retries, actor_id=actor.id, depends_on=set(deps))


def test_an_actor_holds_its_resources_and_its_calls_go_to_it_in_order():
    s = _sched(("c1", "cpu"))
    a = _submit(s, ACTOR, {"CPU": 3})
    calls = [_call(s, a) for _ in range(5)]
    given = s.schedule(0.0)
    assert [i.id for i in given] == [a.id] + [c.id for c in calls]  # the actor before its calls
    assert all(c.node_id == "c1" and c.state == RUNNING for c in calls)
    assert s.nodes["c1"].available["CPU"] == 1  # calls hold nothing of their own
    for c in calls:
        s.complete(c.id, FINISHED, 1.0, node_id="c1")
    assert s.nodes["c1"].available["CPU"] == 1 and s.nodes["c1"].busy  # the actor keeps its node busy


def test_a_call_waiting_on_a_dependency_holds_back_the_calls_behind_it():
    s = _sched(("c1", "cpu"))
    dep = _submit(s, "task", {"CPU": 4})
    a = _submit(s, ACTOR, {"CPU": 0})
    first = _call(s, a, deps=[dep.id])
    second = _call(s, a)
    s.schedule(0.0)
    assert first.state == "blocked" and second.state == QUEUED  # second waits its turn
    s.complete(dep.id, FINISHED, 1.0, node_id="c1")
    assert [i.id for i in s.schedule(1.0)] == [first.id, second.id]


def test_an_actor_on_a_dead_node_restarts_and_its_calls_run_again_in_order():
    s = _sched(("c1", "cpu"), ("c2", "cpu"))
    a = _submit(s, ACTOR, {"CPU": 4}, retries=1)
    c1, c2 = _call(s, a, retries=1), _call(s, a, retries=0)
    later = _call(s, a)
    s.schedule(0.0)
    s.complete(later.id, FINISHED, 0.5, node_id=a.node_id)  # done before the node died
    node = a.node_id
    s.remove_node(node, 1.0)
    assert a.state == QUEUED and a.attempt == 1
    assert c1.state == QUEUED and c1.attempt == 1  # retried (max_task_retries 1)
    assert c2.state == FAILED and "its actor" in c2.message  # no retries left
    c3 = _call(s, a)
    given = s.schedule(1.0)
    assert [i.id for i in given] == [a.id, c1.id, c3.id] and a.node_id != node


def test_an_actor_out_of_restarts_fails_its_calls_and_later_ones():
    s = _sched(("c1", "cpu"))
    a = _submit(s, ACTOR, {"CPU": 1}, actor_name="svc")
    c = _call(s, a, retries=5)
    s.schedule(0.0)
    assert s.actor_by_name("svc") is a
    s.complete(a.id, "lost", 1.0, node_id="c1", message="its process died")
    assert a.state == FAILED and c.state == FAILED and s.actor_by_name("svc") is None
    late = _call(s, a)
    assert late.state == FAILED and "dead" in late.message
    assert s.nodes["c1"].available["CPU"] == 4 and not s.nodes["c1"].busy


def test_killing_an_actor_fails_its_waiting_calls():
    s = _sched(("c1", "cpu"))
    a = _submit(s, ACTOR, {"CPU": 1})
    s.schedule(0.0)
    c = _call(s, a)
    assert s.cancel(a.id, 1.0) == (RUNNING, "c1")  # its node is told to kill it
    s.complete(a.id, CANCELLED, 1.5, node_id="c1")
    assert c.state == FAILED and "was killed" in c.message


# --- placement groups ------------------------------------------------------------------------------

def _group(s, strategy, *bundles) -> Item:
    return _submit(s, PG, bundles=[dict(b) for b in bundles], strategy=strategy)


def _placement(s, pg) -> list[str]:
    return [node for _, node in s.bundles_of(pg.id)]


def test_strategies_on_free_nodes():
    s = _sched()
    spread = _group(s, "STRICT_SPREAD", {"CPU": 1}, {"CPU": 1}, {"CPU": 1})
    packed = _group(s, "STRICT_PACK", {"CPU": 2}, {"CPU": 2})
    s.schedule(0.0)
    assert len(set(_placement(s, packed))) == 1
    assert len(set(_placement(s, spread))) == 3
    soft = _group(s, "SPREAD", {"CPU": 1}, {"CPU": 1})
    s.schedule(0.0)
    assert len(set(_placement(s, soft))) == 2


def test_strict_spread_finds_a_matching_greedy_would_miss():
    s = _sched(("c1", "cpu"), ("g1", "gpu"))
    # the larger bundle must take the gpu node; the CPU bundle then fits the cpu node
    pg = _group(s, "STRICT_SPREAD", {"CPU": 1}, {"CPU": 6})
    s.schedule(0.0)
    assert _placement(s, pg) == ["c1", "g1"]


def test_a_node_tried_for_one_bundle_stays_a_choice_for_the_next():
    s = _sched(("c1", "cpu"), ("g1", "gpu"))
    # the GPU bundle is tried on c1 first (the smaller node) and goes to g1; the CPU bundle then
    # spreads to c1, which that try did not use
    pg = _group(s, "SPREAD", {"CPU": 1, "GPU": 1}, {"CPU": 1})
    s.schedule(0.0)
    assert _placement(s, pg) == ["g1", "c1"]


def test_a_group_is_reserved_whole_or_not_at_all():
    s = _sched(("c1", "cpu"), ("c2", "cpu"))
    pg = _group(s, "STRICT_SPREAD", {"CPU": 2}, {"CPU": 2}, {"CPU": 2})
    s.schedule(0.0)
    assert pg.state == QUEUED and all(n.available["CPU"] == 4 for n in s.nodes.values())
    assert s.group_demand() == [(((("CPU", 2.0),),) * 3, "STRICT_SPREAD", 1)]  # demand for the autoscaler
    s.add_node("c3", "cpu", {"CPU": 4}, False, 1.0)
    s.schedule(1.0)
    assert pg.state == RUNNING and sorted(_placement(s, pg)) == ["c1", "c2", "c3"] and not s.group_demand()


def test_work_in_a_bundle_uses_the_reservation_and_removal_cancels_it():
    s = _sched(("c1", "cpu"))
    pg = _group(s, "PACK", {"CPU": 2})
    s.schedule(0.0)
    inside = [_submit(s, "task", {"CPU": 1}, pg_id=pg.id, bundle_index=0) for _ in range(3)]
    outside = _submit(s, "task", {"CPU": 3})
    s.schedule(0.0)
    assert [i.state for i in inside] == [RUNNING, RUNNING, QUEUED]  # two fit the bundle
    assert outside.state == QUEUED  # the node's other 2 CPUs are not enough, the bundle's are not its
    assert s.nodes["c1"].busy
    state, _ = s.cancel(pg.id, 1.0)
    assert state == CANCELLED and inside[2].state == CANCELLED
    assert sorted(s.to_stop) == sorted((i.id, "c1") for i in inside[:2])
    for i in inside[:2]:
        s.complete(i.id, CANCELLED, 1.5, node_id="c1")
    s.schedule(1.5)
    assert outside.state == RUNNING and s.nodes["c1"].available["CPU"] == 1


def test_too_large_for_its_bundle_fails_at_once():
    s = _sched(("c1", "cpu"))
    pg = _group(s, "PACK", {"CPU": 1})
    t = _submit(s, "task", {"CPU": 2}, pg_id=pg.id, bundle_index=0)
    assert t.state == FAILED and "does not fit bundle 0" in t.message


def test_a_group_that_loses_a_node_is_placed_again_whole():
    s = _sched(("c1", "cpu"), ("c2", "cpu"), ("c3", "cpu"))
    pg = _group(s, "STRICT_SPREAD", {"CPU": 4}, {"CPU": 4})
    s.schedule(0.0)
    t = _submit(s, "task", {"CPU": 4}, pg_id=pg.id, bundle_index=0, retries=1)
    s.schedule(0.0)
    here, lost = _placement(s, pg)
    spare = ({"c1", "c2", "c3"} - {here, lost}).pop()
    s.remove_node(lost, 1.0)
    s.schedule(1.0)
    # the task on the surviving node runs on, holding its share of that node: two nodes with 4 CPUs free
    # are not there yet, so the group waits, reserving nothing
    assert t.state == RUNNING and pg.state == QUEUED
    assert s.nodes[here].available["CPU"] == 0 and s.nodes[spare].available["CPU"] == 4
    s.complete(t.id, FINISHED, 2.0, node_id=here)
    s.schedule(2.0)
    assert pg.state == RUNNING and sorted(_placement(s, pg)) == sorted([here, spare])


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["group", "task", "done", "remove", "kill_node"]),
                              st.integers(0, 20)), max_size=40))
def test_no_node_ever_gives_more_than_it_has(ops):
    """Whatever groups, tasks in them and outside them, removals and node deaths: no node's resources
    (or a bundle's) go below zero, and every resource comes back once all is done."""
    s = _sched()
    groups: list[Item] = []
    tasks: list[Item] = []
    shapes = [{"CPU": 1}, {"CPU": 2}, {"CPU": 1, "GPU": 1}]
    strategies = ["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]
    for op, k in ops:
        if op == "group":
            groups.append(_group(s, strategies[k % 4], *[shapes[(k + i) % 3] for i in range(1 + k % 3)]))
        elif op == "task":
            live = [g for g in groups if g.state in (QUEUED, RUNNING)]
            kw = {"pg_id": live[k % len(live)].id, "bundle_index": -1} if live and k % 2 else {}
            tasks.append(_submit(s, "task", {"CPU": 1}, retries=1, **kw))
        elif op == "done":
            running = [t for t in tasks if t.state == RUNNING]
            if running:
                t = running[k % len(running)]
                s.complete(t.id, FINISHED, 1.0, node_id=t.node_id)
        elif op == "remove" and groups and groups[k % len(groups)].id in s.groups:
            s.cancel(groups[k % len(groups)].id, 1.0)
        elif op == "kill_node" and len(s.nodes) > 1:
            s.remove_node(sorted(s.nodes)[k % len(s.nodes)], 1.0)
        s.schedule(1.0)
        for n in s.nodes.values():
            assert all(v >= -1e-9 for v in n.available.values()), n
            assert all(f >= -1e-9 for f in n.gpu_free.values()), n
        for g in s.groups.values():
            for b in g.bundles:
                if b.pool is not None:
                    assert all(v >= -1e-9 for v in b.pool.available.values())
    # everything ends: all comes back
    for g in list(s.groups):
        s.cancel(g, 2.0)
    for t in tasks:
        if t.state == RUNNING:
            s.complete(t.id, FINISHED, 2.0, node_id=t.node_id)
    for n in s.nodes.values():
        assert n.available == n.total and not n.busy


def test_a_node_registering_again_keeps_what_it_still_runs():
    """A registration retried after its reply was lost (or after a head restart) is reconciled like a
    head restart: what the node says it still runs stays its own; what it does not list never reached
    it and is requeued with no retry spent (a call behind it keeps its place in its actor's line)."""
    s = _sched(("c1", "cpu"))
    a = _submit(s, ACTOR, {"CPU": 1})
    kept, gone = _submit(s, "task", {"CPU": 1}), _submit(s, "task", {"CPU": 1}, retries=0)
    call, unsent = _call(s, a), _call(s, a)
    s.schedule(0.0)
    assert unsent.state == RUNNING
    lost, drop = s.add_node("c1", "cpu", {"CPU": 4}, False, 1.0, first=False,
                            running=[(a.id, 0), (kept.id, 0), (call.id, 0), ("t-unknown", 0)])
    assert sorted(i.id for i in lost) == sorted([gone.id, unsent.id]) and drop == [("t-unknown", 0)]
    assert a.state == kept.state == call.state == RUNNING and a.attempt == kept.attempt == 0
    assert gone.state == QUEUED and gone.attempt == 1 and unsent.state == QUEUED
    s.schedule(1.0)
    assert gone.state == RUNNING and s.nodes["c1"].available["CPU"] == 1
    assert unsent.state == RUNNING and unsent.node_id == "c1"  # given to the actor again, after `call`
    s.complete(call.id, FINISHED, 2.0, node_id="c1")
    s.complete(unsent.id, FINISHED, 2.0, node_id="c1")
    assert call.state == unsent.state == FINISHED


def test_work_a_restarted_agent_no_longer_runs_spends_a_retry():
    """An agent's first registration since it started: what it had died with its old process."""
    s = _sched(("c1", "cpu"))
    once, never = _submit(s, "task", {"CPU": 1}, retries=1), _submit(s, "task", {"CPU": 1}, retries=0)
    s.schedule(0.0)
    lost, drop = s.add_node("c1", "cpu", {"CPU": 4}, False, 1.0, first=True)
    assert {i.id for i in lost} == {once.id, never.id} and drop == []
    assert once.state == QUEUED and once.attempt == 1
    assert never.state == FAILED and "agent restarted" in never.message
