"""`launch plan` and `launch up --dry-run`: what `up` would create and what the fleet may cost, checked
against hand-computed small cases; nothing is created and no cloud is called."""

from __future__ import annotations

import json

import pytest

from core.config import parse_config
from launcher.plan import fleet_plan
from tests.infra import cli, write_config

AWS = {
    "cluster_name": "plan-aws",
    "max_workers": 6,
    "provider": {"type": "aws", "region": "us-east-1", "availability_zone": "us-east-1a,us-east-1b"},
    "available_node_types": {
        "head": {"node_config": {"InstanceType": "m5.large"}, "resources": {"CPU": 0}},
        "cpu": {"node_config": {"InstanceType": "m5.xlarge"}, "resources": {"CPU": 4}, "min_workers": 2,
                "max_workers": 4},
        "gpu": {"node_config": {"InstanceType": ["g5.xlarge", "g4dn.xlarge"]}, "spot": True, "max_workers": 2,
                "resources": {"CPU": 4, "GPU": 1}},
        "mine": {"node_config": {"InstanceType": "m5.xlarge"}, "resources": {"CPU": 4}, "cost_per_hour": 0.05,
                 "max_workers": 1, "min_workers": 1},
    },
    "head_node_type": "head",
}


def test_the_plan_is_the_planners_min_workers_priced_node_by_node():
    fp = fleet_plan(parse_config(AWS), now=1000.0)
    rows = {(n.role, n.node_type): n for n in fp.nodes}
    assert set(rows) == {("head", "head"), ("worker", "cpu"), ("worker", "mine")}  # no demand: no GPU node
    head, cpu, mine = rows["head", "head"], rows["worker", "cpu"], rows["worker", "mine"]
    assert (head.count, head.per_hour, head.machine) == (1, 0.096, "m5.large")  # the catalog's us-east-1 price
    assert (cpu.count, cpu.per_hour, cpu.total) == (2, 0.192, 0.384) and "min_workers" in cpu.why
    assert (mine.per_hour, mine.why.split(";")[0]) == (0.05, "the config's cost_per_hour")
    assert head.where == "us-east-1: us-east-1a, then us-east-1b" and head.market == "on-demand"
    assert fp.at_min_workers == round(0.096 + 2 * 0.192 + 0.05, 6)
    # at max_workers (6): the dearest first: 2 GPU nodes (g4dn.xlarge, the cheaper of the two, 0.526: no
    # spot price in the catalog, so on demand), then 4 cpu; `mine` (0.05) does not fit in the cap of 6
    assert fp.at_max_workers == round(0.096 + 2 * 0.526 + 4 * 0.192, 6)
    assert fp.capped == fp.at_max_workers and fp.max_cost_per_hour is None


def test_max_cost_per_hour_caps_the_fleet_and_more_workers_than_the_cap_are_not_planned():
    data = json.loads(json.dumps(AWS))
    data["max_cost_per_hour"] = 1.0
    data["max_workers"] = 20
    data["available_node_types"]["cpu"]["min_workers"] = 10
    data["available_node_types"]["cpu"]["max_workers"] = 10
    fp = fleet_plan(parse_config(data), now=1000.0)
    assert fp.capped == 1.0 < fp.at_max_workers
    cpu = next(n for n in fp.nodes if n.node_type == "cpu")
    assert cpu.count * cpu.per_hour + 0.096 + 0.05 <= 1.0  # the planner's budget holds at min_workers too


def test_launch_plan_and_up_dry_run_create_nothing(tmp_path):
    path = write_config(tmp_path / "c.yaml", AWS)
    home = tmp_path / "home"
    r = cli("plan", str(path), "--json", home=home)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["at_min_workers"] == round(0.096 + 2 * 0.192 + 0.05, 6) and got["autoscaler"] is None
    assert [n["node_type"] for n in got["nodes"]] == ["head", "cpu", "mine"]
    r = cli("up", str(path), "--dry-run", home=home)
    assert r.returncode == 0 and "would create (nothing is created" in r.stdout, r.stdout + r.stderr
    assert "0.5300 $/h at min_workers" in r.stdout
    assert not (home / "clusters" / "plan-aws").exists()  # no state, no key: nothing


@pytest.mark.parametrize("bad,line", [
    ({"max_workers": -1}, "max_workers"),
])
def test_a_bad_config_gets_one_line_naming_the_field(tmp_path, bad, line):
    path = write_config(tmp_path / "c.yaml", {**AWS, **bad})
    r = cli("plan", str(path), home=tmp_path / "home")
    assert r.returncode != 0 and line in r.stderr and "Traceback" not in r.stderr
