"""Bad input to the actor and placement group API fails where it is written, in one clear line, before
anything reaches a cluster (no connection is made: none is needed to refuse it)."""

from __future__ import annotations

import pytest

import runtime
from runtime.placement_group import PlacementGroup, PlacementGroupSchedulingStrategy, placement_group


@pytest.mark.parametrize("bundles, strategy, message", [
    ([{"CPU": 1}], "TIGHT", "strategy must be one of PACK, SPREAD, STRICT_PACK, STRICT_SPREAD"),
    ([], "PACK", "at least one bundle"),
    ([{"CPU": 1}, {}], "PACK", "bundle 1 is empty"),
    ([{"CPU": -1}], "PACK", "bundle 0: resource CPU: must be a finite number >= 0"),
    ([{"CPU": float("inf")}], "PACK", r"bundle 0: resource CPU: must be a finite number >= 0 \(got inf\)"),
    ([{"GPU": float("nan")}], "PACK", r"bundle 0: resource GPU: must be a finite number >= 0 \(got nan\)"),
    ([{"GPU": 1.5}], "SPREAD", "more than one GPU must be a whole number"),
    ("CPU", "PACK", "bundles must be a list of dicts"),
    ([{"CPU": "two"}], "PACK", "bundle 0: resource CPU: must be a number"),
])
def test_a_malformed_placement_group_is_refused_by_name(bundles, strategy, message):
    with pytest.raises(ValueError, match=message):
        placement_group(bundles, strategy=strategy)


def test_a_bundle_index_out_of_range_is_refused_where_it_is_given():
    pg = PlacementGroup("pg-x", [{"CPU": 1}, {"CPU": 1}], "PACK")

    @runtime.remote
    def f():
        return 1

    with pytest.raises(ValueError, match="bundle_index 2 is out of range: the group has 2 bundle"):
        f.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 2)).remote()
    with pytest.raises(TypeError, match="placement_group must be a PlacementGroup"):
        f.options(placement_group="pg-x").remote()


def test_bad_actor_options_are_refused_by_name():
    class Plain:
        pass

    with pytest.raises(TypeError, match="unknown actor option.*concurrency_groups"):
        runtime.remote(concurrency_groups={"io": 2})(Plain)
    with pytest.raises(ValueError, match=r"max_concurrency must be an int >= 1 \(got 0\)"):
        runtime.remote(max_concurrency=0)(Plain).remote()
    with pytest.raises(ValueError, match="get_if_exists needs a name"):
        runtime.remote(get_if_exists=True)(Plain).remote()
    with pytest.raises(ValueError, match="lifetime must be 'detached'"):
        runtime.remote(lifetime="forever")(Plain)
    with pytest.raises(ValueError, match="max_restarts must be an int >= 0, or -1"):
        runtime.remote(max_restarts=-5)(Plain).remote()
    with pytest.raises(ValueError, match="an actor's name must be a non-empty string"):
        runtime.remote(Plain).options(name="").remote()
    with pytest.raises(TypeError, match="must be made with .remote"):
        runtime.remote(Plain)()


@pytest.mark.parametrize("options, message", [
    ({"num_cpus": -1}, r"num_cpus: must be a finite number >= 0 \(got -1\)"),
    ({"num_cpus": float("nan")}, r"num_cpus: must be a finite number >= 0 \(got nan\)"),
    ({"memory": -5}, r"memory: must be a finite number >= 0 \(got -5\)"),
    ({"num_gpus": "1"}, r"num_gpus: must be a number \(got '1'\)"),
    ({"resources": {"CPU": -2}}, r"resources\['CPU'\]: must be a finite number >= 0 \(got -2\)"),
    ({"resources": {"x": float("nan")}}, r"resources\['x'\]: must be a finite number >= 0 \(got nan\)"),
    ({"resources": {"": 1}}, "resource name '': must be 1-100 letters"),
    ({"resources": {" ": 1}}, "resource name ' ': must be 1-100 letters"),
    ({"resources": {"../x": 1}}, r"resource name '../x': must be 1-100 letters"),
    ({"resources": {"a\0b": 1}}, "resource name 'a\\\\x00b': must be 1-100 letters"),
    ({"resources": {"x" * 10_000: 1}}, "resource name 'xxxx"),
    ({"resources": {f"r{i}": 1 for i in range(10_000)}}, "resources: at most 32 kinds per request"),
    ({"resources": ["GPU"]}, "resources: must be a dict of name to amount"),
])
def test_a_bad_resource_request_is_refused_by_name_before_it_is_sent(options, message):
    @runtime.remote(**options)
    def f():
        return 1

    with pytest.raises(ValueError, match=message):
        f.remote()


def test_an_accelerator_or_node_resource_name_is_a_name():
    from runtime.api import _request

    assert _request(1, 0, 0, {"accelerator_type:T4": 1, "node:10.0.0.5": 0.01}) == {
        "CPU": 1.0, "accelerator_type:T4": 1.0, "node:10.0.0.5": 0.01}


@pytest.mark.parametrize("call, error, message", [
    (lambda: runtime.get(5), TypeError, r"get\(\) takes an ObjectRef or a list of them \(got int\)"),
    (lambda: runtime.get([runtime.ObjectRef("t-1"), "t-2"]), TypeError, r"get\(\) takes an ObjectRef"),
    (lambda: runtime.get(runtime.ObjectRef("t-1"), timeout=-1), ValueError, r"timeout: must be a finite number >= 0"),
    (lambda: runtime.wait([runtime.ObjectRef("t-1")], num_returns=1.5), ValueError, "num_returns: must be a whole number >= 0"),
    (lambda: runtime.wait([runtime.ObjectRef("t-1")], num_returns=-1), ValueError, "num_returns: must be a whole number >= 0"),
    (lambda: runtime.wait([runtime.ObjectRef("t-1")], timeout=float("nan")), ValueError, "timeout: must be a finite"),
    (lambda: runtime.cancel("t-1"), TypeError, r"cancel\(\) takes an ObjectRef"),
])
def test_bad_arguments_to_get_wait_and_cancel_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call()
