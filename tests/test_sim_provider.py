"""The `sim` provider: a real head and autoscaler on this machine, simulated workers that boot after their
boot time and whose light agents (runtime/sim_agents.py, many in one process) speak the head's protocol
and "run" each item for the time it declares; capacity and spot interruptions modelled; `down` leaves
nothing."""

from __future__ import annotations

import json

import runtime
from runtime.sim_agents import DURATION_ENV
from tests.infra import RunningCluster, cli, cluster_status, node_dir, wait_for


def _config(name: str, **provider) -> dict:
    return {
        "cluster_name": name,
        "max_workers": 20,
        "idle_timeout_minutes": 0.5,
        "provider": {"type": "sim", "boot_time_s": 1.0, **provider},
        "autoscaler": {"tick_s": 0.3},
        "runtime": {"heartbeat_interval_s": 0.2, "node_timeout_s": 3},
        "available_node_types": {
            "head": {"resources": {"CPU": 0}, "max_workers": 0},
            "cpu": {"resources": {"CPU": 2, "memory": 8 * 2**30}, "max_workers": 10, "cost_per_hour": 0.1},
            "gpu-spot": {"resources": {"CPU": 4, "GPU": 1}, "max_workers": 4, "spot": True, "cost_per_hour": 0.3},
        },
        "head_node_type": "head",
    }


@runtime.remote(num_cpus=1)
def step():
    return "never runs on a simulated node"


def _agent_hosts(state_file) -> list[int]:
    """The processes running the light agents of this cluster's simulated nodes."""
    from pathlib import Path

    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"runtime.sim_agents" in cmd and str(state_file).encode() in cmd:
            found.append(int(proc.name))
    return found


def _events(c: RunningCluster) -> list[dict]:
    path = node_dir(c.head_home) / "logs" / "autoscaler.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_simulated_workers_boot_register_and_run_declared_durations_then_go(tmp_path):
    c = RunningCluster(tmp_path, _config("sim-basic", capacity={"cpu": 3}))
    state_file = c.nodes_dir.parent / "nodes.json"
    try:
        # 12 one-CPU tasks of 1 s: 6 two-CPU nodes would do, but the simulated cloud has room for 3 (the
        # planner then takes the next type that fits: the spot GPU nodes have CPUs too)
        timed = step.options(runtime_env={"env_vars": {DURATION_ENV: "1.0"}})
        refs = [timed.remote() for _ in range(12)]
        assert runtime.get(refs, timeout=120) == [None] * 12  # "run" for 1 s each: nothing of ours ran
        sims = [n for n in runtime.nodes() if n["NodeID"].startswith("sim-")]
        cpu = {n["NodeID"] for n in sims if n["NodeType"] == "cpu"}
        assert len(cpu) == 3 and all(n["Resources"]["CPU"] == 2 for n in sims if n["NodeType"] == "cpu")
        failures = [e for e in _events(c) if e["event"] == "launch-failed" and e["node_type"] == "cpu"]
        assert failures and "provider.capacity allows 3" in failures[0]["error"]
        # a simulated node runs no commands
        r = cli("exec", str(c.path), "--node", sims[0]["NodeID"], "true", home=c.home)
        assert r.returncode != 0 and "is simulated (provider type sim): it runs no commands" in r.stderr
        assert _agent_hosts(state_file)  # one process for all of them
    finally:
        c.down()
    # `down`: no simulated node left, and their agents' process gone with the last of them
    assert {k: v for k, v in json.loads(state_file.read_text() or "{}").items()} == {}
    wait_for(lambda: _agent_hosts(state_file) == [], timeout=15, what="the agents' process gone")


def test_spot_interruptions_are_noticed_replaced_and_cost_no_retry(tmp_path):
    c = RunningCluster(tmp_path, _config("sim-spot", spot_interruptions_per_hour=1800.0, spot_notice_s=1.0, seed=7))
    try:
        @runtime.remote(num_cpus=1, num_gpus=1, max_retries=0)
        def train():
            return "never runs"

        # a spot node lasts 2 s on average and the task needs 2.5: it loses its node (a notice a second
        # ahead) and runs again elsewhere, each time without costing its retry (it has none)
        assert runtime.get(train.options(runtime_env={"env_vars": {DURATION_ENV: "2.5"}}).remote(), timeout=240) is None
        kinds = [e["event"] for e in _events(c)]
        assert "preempt-notice" in kinds and "preempted-node-gone" in kinds
    finally:
        c.down()
