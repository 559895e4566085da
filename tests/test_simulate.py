"""`launch simulate`: a trace replayed through the real planner and scheduler on the simulated cloud, in
virtual time; its numbers checked against small cases computed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from core.errors import ConfigError
from launcher.simulate_report import parse_sets, percentile, simulate, summary
from launcher.trace import TraceTask, read_trace, trace_from_jobs
from tests.infra import ROOT, cli

HEAD = {"resources": {"CPU": 0}, "cost_per_hour": 0.5, "max_workers": 0}


def config(tmp_path: Path, types: dict, **top) -> Path:
    data = {"cluster_name": "sim-t", "max_workers": 8, "idle_timeout_minutes": 1,
            "provider": {"type": "sim", "boot_time_s": 60, **top.pop("provider", {})},
            "available_node_types": {"head": HEAD, **types}, "head_node_type": "head", **top}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run(path: Path, tasks: list[TraceTask], *sets: str, horizon_s: float = 7 * 86400) -> list[dict]:
    return [{"set": changes, **summary(o)} for changes, o in simulate(path, tasks, list(sets), horizon_s)]


CPU4 = {"cpu": {"resources": {"CPU": 4}, "cost_per_hour": 1.0, "max_workers": 4}}


def test_eight_tasks_on_two_nodes_cost_what_they_are_up_for(tmp_path):
    # 8 one-CPU tasks of 600 s at t=0: the tick at 0 launches 2 four-CPU nodes, booted at 60 (every task
    # waits 60 s), done at 660, idle a minute, terminated at 720. Nodes: 2 x 720 s at $1/h = $0.40; the
    # head 720 s at $0.5/h = $0.10. CPU busy 8 x 600 of 2 x 4 x 720 provisioned.
    [r] = run(config(tmp_path, CPU4), [TraceTask(0, 600)] * 8)
    assert (r["cost_usd"], r["cost_by_type"]) == (0.5, {"cpu": 0.4, "head": 0.1})
    assert (r["wait_p50_s"], r["wait_p99_s"], r["span_s"]) == (60.0, 60.0, 720.0)
    assert r["utilization"] == round(4800 / 5760, 4) and r["utilization_of"] == "CPU"
    assert (r["tasks_finished"], r["launches"], r["terminations"], r["nodes_peak"]) == (8, 2, 2, 3)


def test_variants_side_by_side_a_longer_idle_timeout_pays_for_the_idle_nodes(tmp_path):
    short, long = run(config(tmp_path, CPU4), [TraceTask(0, 600)] * 8, "idle_timeout_minutes=1,10")
    assert short["set"] == {"idle_timeout_minutes": 1} and long["set"] == {"idle_timeout_minutes": 10}
    assert short["cost_usd"] == 0.5
    # idle from 660 to 1260: nodes 2 x 1260 s at $1/h, the head 1260 s at $0.5/h
    assert (long["cost_usd"], long["span_s"]) == (round(0.7 + 0.175, 4), 1260.0)


def test_the_cheapest_fleet_is_chosen(tmp_path):
    # 8 CPUs of work: four 2-CPU nodes at $0.10/h ($0.40/h) beat one 8-CPU node at $0.50/h
    path = config(tmp_path, {"small": {"resources": {"CPU": 2}, "cost_per_hour": 0.1, "max_workers": 8},
                             "big": {"resources": {"CPU": 8}, "cost_per_hour": 0.5, "max_workers": 2}})
    [r] = run(path, [TraceTask(0, 3600)] * 8)
    # booted at 60, done at 3660, terminated at 3720: 4 x 3720 s at $0.10/h
    assert r["cost_by_type"] == {"head": round(0.5 * 3720 / 3600, 4), "small": round(4 * 0.1 * 3720 / 3600, 4)}
    assert r["launches"] == 4


def test_work_that_is_not_spot_ok_never_runs_on_spot(tmp_path):
    path = config(tmp_path, {"spot": {"resources": {"CPU": 4}, "cost_per_hour": 0.1, "spot": True, "max_workers": 2},
                             "od": {"resources": {"CPU": 4}, "cost_per_hour": 0.4, "max_workers": 2}})
    [anywhere] = run(path, [TraceTask(0, 600)] * 4)
    assert set(anywhere["cost_by_type"]) == {"head", "spot"}  # the cheaper, spot
    [kept] = run(path, [TraceTask(0, 600, spot_ok=False)] * 4)
    assert set(kept["cost_by_type"]) == {"head", "od"} and kept["cost_spot_usd"] == 0.0
    assert kept["cost_by_type"]["od"] == round(0.4 * 720 / 3600, 4)


def test_a_stockout_makes_work_wait_for_the_node_there_is(tmp_path):
    # the cloud has one 4-CPU node: the second 4-CPU task waits for the first (boot 60 + 100 s)
    path = config(tmp_path, CPU4, provider={"capacity": {"cpu": 1}})
    [r] = run(path, [TraceTask(0, 100, {"CPU": 4})] * 2)
    assert (r["wait_p50_s"], r["wait_p99_s"], r["tasks_finished"], r["launches"]) == (60.0, 160.0, 2, 1)
    assert r["launch_failures"] >= 1  # asked for a second, out of capacity: backed off


def test_spot_interruptions_requeue_work_and_it_still_finishes(tmp_path):
    path = config(tmp_path, {"spot": {"resources": {"CPU": 4}, "cost_per_hour": 0.1, "spot": True, "max_workers": 4}},
                  provider={"spot_interruptions_per_hour": 4.0, "spot_notice_s": 60, "seed": 3})
    tasks = [TraceTask(i * 60.0, 1800) for i in range(8)]
    [r] = run(path, tasks)
    assert r["preemptions"] > 0 and r["tasks_preempted"] > 0
    assert r["tasks_finished"] == 8 and r["tasks_unfinished"] == 0
    again = run(path, tasks)[0]  # the seed's: the same run again
    assert {k: v for k, v in again.items() if k != "wall_s"} == {k: v for k, v in r.items() if k != "wall_s"}


def test_infeasible_work_is_reported_and_does_not_hold_the_run(tmp_path):
    [r] = run(config(tmp_path, CPU4), [TraceTask(0, 60, {"GPU": 1}), TraceTask(0, 60)])
    assert (r["tasks_infeasible"], r["tasks_finished"], r["tasks_unfinished"]) == (1, 1, 0)
    assert any("GPU" in reason for reason in r["infeasible"])


def test_work_that_cannot_be_served_stops_at_the_horizon(tmp_path):
    path = config(tmp_path, CPU4, provider={"capacity": {"cpu": 0}})
    [r] = run(path, [TraceTask(0, 60)], horizon_s=3600)
    assert (r["span_s"], r["tasks_unfinished"], r["cost_usd"]) == (3600.0, 1, 0.5)


def test_percentile_is_nearest_rank():
    assert (percentile([], 0.5), percentile([3, 1, 2], 0.5), percentile([1, 2], 0.99)) == (0.0, 2, 2)
    assert percentile(list(range(1, 101)), 0.99) == 99


def test_sets_make_one_variant_per_combination():
    assert parse_sets([]) == [{}]
    assert parse_sets(["a=1,2", "b=x"]) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    with pytest.raises(ConfigError, match="--set a: expected KEY=VALUE"):
        parse_sets(["a"])


def test_a_trace_line_that_is_wrong_is_named(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"t": 0, "duration": 5}\n{"t": 1, "duration": -2}\n')
    with pytest.raises(ConfigError, match=r"t.jsonl line 2: duration must be a number >= 0 \(got -2\)"):
        read_trace(trace)
    trace.write_text('{"t": 0, "duration": 5, "gpus": 1}\n')
    with pytest.raises(ConfigError, match="line 1: unknown field 'gpus'"):
        read_trace(trace)
    trace.write_text('{"t": 0, "duration": 5, "resources": {"GPU": 1.5}}\n')
    with pytest.raises(ConfigError, match="line 1: resources: GPU: more than one GPU must be a whole number"):
        read_trace(trace)
    trace.write_text("{not json\n")
    with pytest.raises(ConfigError, match="line 1: not JSON"):
        read_trace(trace)


def test_a_job_list_is_a_trace():
    rows = [{"id": "j-2", "name": "b", "state": "finished", "resources": {"CPU": 2}, "submitted_at": 1010.0,
             "started_at": 1020.0, "finished_at": 1320.0},
            {"id": "j-1", "name": "a", "state": "failed", "resources": {}, "submitted_at": 1000.0,
             "started_at": 1001.0, "finished_at": 1061.0},
            {"id": "j-3", "name": "c", "state": "running", "resources": {}, "submitted_at": 1030.0,
             "started_at": 1031.0, "finished_at": 0.0}]
    assert trace_from_jobs(rows, "jobs.json") == [TraceTask(0.0, 60.0, {}, True, "a"),
                                                   TraceTask(10.0, 300.0, {"CPU": 2.0}, True, "b")]


def test_the_command_prints_a_table_writes_a_chart_and_gives_json(tmp_path):
    path = config(tmp_path, CPU4)
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(json.dumps({"t": 0, "resources": {"CPU": 1}, "duration": 600}) + "\n" for _ in range(8)))
    r = cli("simulate", str(path), "--trace", str(trace), "--set", "idle_timeout_minutes=1,10", home=tmp_path,
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "idle_timeout_minutes=10" in r.stdout and "0.50" in r.stdout and "0.88" in r.stdout
    chart = (tmp_path / "simulate-sim-t.html").read_text()
    assert chart.count("<svg") == 2 and "idle_timeout_minutes=10" in chart
    r = cli("simulate", str(path), "--trace", str(trace), "--json", "--no-chart", home=tmp_path, cwd=tmp_path)
    out = json.loads(r.stdout)
    assert (out["cost_usd"], out["wait_p50_s"], out["wait_p99_s"]) == (0.5, 60.0, 60.0)


def test_bad_input_is_one_line_naming_what(tmp_path):
    path = config(tmp_path, CPU4)
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"t": 0, "duration": "long"}\n')
    r = cli("simulate", str(path), "--trace", str(trace), home=tmp_path, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().endswith("line 1: duration must be a number >= 0 (got \"long\")")
    trace.write_text('{"t": 0, "duration": 1}\n')
    r = cli("simulate", str(path), "--trace", str(trace), "--set", "max_workers=many", home=tmp_path, cwd=tmp_path)
    assert r.returncode == 2 and "max_workers" in r.stderr and "Traceback" not in r.stderr
    r = cli("simulate", str(path), "--trace", str(trace), "--set", "boot_time_s=-1", home=tmp_path, cwd=tmp_path)
    assert r.returncode == 2 and "boot_time_s" in r.stderr and "Traceback" not in r.stderr


def test_a_node_type_of_unknown_shape_is_named(tmp_path):
    # Ray's example: m5.large, whose shape the shipped catalog does not hold; a cluster learns it at `up`
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"t": 0, "duration": 60}\n')
    r = cli("simulate", str(ROOT / "tests" / "data" / "ray_aws_example.yaml"), "--trace", str(trace), home=tmp_path,
            cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "available_node_types.ray.worker.default.resources: unknown" in r.stderr
    ok = cli("simulate", str(ROOT / "tests" / "data" / "ray_aws_example.yaml"), "--trace", str(trace), "--no-chart",
             "--set", "available_node_types.ray.head.default.resources.CPU=2",
             "--set", "available_node_types.ray.worker.default.resources.CPU=2", "--json", home=tmp_path, cwd=tmp_path)
    assert ok.returncode == 0 and json.loads(ok.stdout)["tasks_finished"] == 1, ok.stderr


def test_the_example_day_replays_in_seconds():
    path, trace = ROOT / "examples" / "sim-gpu-pool.yaml", ROOT / "examples" / "day_trace.jsonl"
    [r] = run(path, read_trace(trace))
    assert r["tasks_finished"] == r["tasks"] == len(trace.read_text().splitlines())
    assert r["preemptions"] > 0 and r["cost_by_type"]["gpu-spot"] > 0 and r["cost_by_type"]["gpu"] > 0
    assert 20 * 3600 < r["span_s"] < 30 * 3600
