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

    with pytest.raises(TypeError, match="unknown actor option.*max_concurrency"):
        runtime.remote(max_concurrency=4)(Plain)
    with pytest.raises(ValueError, match="lifetime must be 'detached'"):
        runtime.remote(lifetime="forever")(Plain)
    with pytest.raises(ValueError, match="max_restarts must be an int >= 0, or -1"):
        runtime.remote(max_restarts=-5)(Plain).remote()
    with pytest.raises(ValueError, match="an actor's name must be a non-empty string"):
        runtime.remote(Plain).options(name="").remote()
    with pytest.raises(TypeError, match="must be made with .remote"):
        runtime.remote(Plain)()
