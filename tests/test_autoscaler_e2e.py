"""The autoscaler on a real local cluster: demand in, nodes up, work done, nodes down; faults."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.request

import runtime
from tests.infra import cli, processes_with_env, wait_for, write_config


def _config(name: str, **overrides) -> dict:
    cfg = {
        "cluster_name": name,
        "max_workers": 4,
        "idle_timeout_minutes": 0.05,  # 3 s
        "provider": {"type": "local"},
        "autoscaler": {"tick_s": 0.3, "backoff_initial_s": 30},
        "runtime": {"heartbeat_interval_s": 0.2, "node_timeout_s": 3},
        "available_node_types": {
            "head": {"resources": {"CPU": 0}, "max_workers": 0},
            "cpu": {"resources": {"CPU": 2}, "max_workers": 2, "cost_per_hour": 0.10},
            "gpu": {"resources": {"CPU": 1, "GPU": 1}, "max_workers": 1, "cost_per_hour": 0.50},
        },
        "head_node_type": "head",
    }
    cfg.update(overrides)
    return cfg


class Up:
    def __init__(self, tmp_path, data):
        self.home = tmp_path / "home"
        self.path = write_config(tmp_path / "c.yaml", data)
        r = cli("up", str(self.path), "--yes", home=self.home)
        assert r.returncode == 0, r.stdout + r.stderr
        cdir = self.home / "clusters" / data["cluster_name"]
        info = json.loads((cdir / "cluster.json").read_text())
        self.head_dir = cdir / "local" / "nodes" / info["head_node_id"] / ".launch-runtime"
        runtime.init(address=info["head_address"], token=(cdir / "token").read_text().strip())
        self.seen: set[str] = set()

    def status(self) -> dict:
        st = json.loads(cli("status", str(self.path), "--json", home=self.home).stdout)
        self.seen |= {n["id"] for n in st["nodes"]}
        return st

    def workers(self, node_type=None, status=None) -> list[dict]:
        return [n for n in self.status()["nodes"] if n["kind"] == "worker"
                and (node_type is None or n["node_type"] == node_type) and (status is None or n["status"] == status)]

    def events(self) -> list[dict]:
        path = self.head_dir / "logs" / "autoscaler.log"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def down(self):
        runtime.shutdown()
        cli("down", str(self.path), "--yes", home=self.home)
        for node_id in self.seen:
            assert processes_with_env(f"LAUNCH_LOCAL_NODE={node_id}\0") == [], f"{node_id} leaked"


@runtime.remote(num_cpus=1)
def cpu_task(sleep_s=0.5):
    import os
    import time
    time.sleep(sleep_s)
    return os.environ["LAUNCH_NODE_ID"]


@runtime.remote(num_cpus=0, num_gpus=1)
def gpu_task():
    import os
    return os.environ["LAUNCH_NODE_ID"], os.environ["CUDA_VISIBLE_DEVICES"]


def test_scale_up_from_zero_for_cpu_and_gpu_then_down_when_idle(tmp_path):
    c = Up(tmp_path, _config("scale"))
    try:
        assert c.workers() == []  # an empty cluster: only the head, which has no CPU for tasks
        refs = [cpu_task.remote() for _ in range(4)] + [gpu_task.remote()]
        results = runtime.get(refs, timeout=90)
        workers = {n["id"]: n["node_type"] for n in c.workers()}
        assert {workers[r] for r in results[:4]} <= {"cpu", "gpu"}
        gpu_node, cuda = results[4]
        assert workers[gpu_node] == "gpu" and cuda == "0"
        assert sorted(workers.values()).count("cpu") >= 1 and "gpu" in workers.values()

        launches = [e for e in c.events() if e["event"] == "launch"]
        assert launches and all("queued" in e["reason"] for e in launches)

        # metrics on the head, Prometheus text format
        addr = (c.head_dir / "metrics.address").read_text()
        body = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
        assert 'launch_launches_total{node_type="gpu"} 1' in body and "launch_cost_per_hour" in body

        # idle past the timeout: everything goes, with the reason, and the status says so
        wait_for(lambda: c.workers() == [], timeout=60, what="scale-down to zero workers")
        terminated = [e for e in c.events() if e["event"] == "terminate"]
        assert {e["node"] for e in terminated} >= set(workers) and all("idle for" in e["reason"] for e in terminated)
        table = cli("status", str(c.path), home=c.home).stdout
        assert "Autoscaler (cost" in table and "pending demand: none" in table
    finally:
        c.down()


def test_failing_node_type_falls_back_to_the_next(tmp_path):
    data = _config("fallback", provider={"type": "local", "capacity_errors": ["cpu-spot"]})
    data["available_node_types"]["cpu-spot"] = {"resources": {"CPU": 2}, "max_workers": 2,
                                                "cost_per_hour": 0.03, "spot": True}
    c = Up(tmp_path, data)
    try:
        node = runtime.get(cpu_task.remote(0.0), timeout=90)
        assert {n["id"]: n["node_type"] for n in c.workers()}[node] == "cpu"
        failed = [e for e in c.events() if e["event"] == "launch-failed"]
        assert failed and failed[0]["node_type"] == "cpu-spot" and failed[0]["backoff_s"] == 30
        st = c.status()["autoscaler"]
        assert st["failures"]["cpu-spot"]["count"] >= 1 and "no capacity" in st["failures"]["cpu-spot"]["last_error"]
        assert "failing: cpu-spot" in cli("status", str(c.path), home=c.home).stdout
    finally:
        c.down()


def test_kill_9_of_the_monitor_during_scale_up_leaks_nothing_and_duplicates_nothing(tmp_path):
    # setup takes 2 s so the kill lands mid-bootstrap; no scale-down while we look (idle timeout 1 min)
    data = _config("crash", worker_setup_commands=["sleep 2"], idle_timeout_minutes=1)
    data["available_node_types"]["cpu"]["max_workers"] = 4
    c = Up(tmp_path, data)
    try:
        refs = [cpu_task.options(num_cpus=2).remote(0.2) for _ in range(2)]  # needs exactly 2 cpu nodes
        wait_for(lambda: len(c.workers("cpu")) == 2, what="two cpu nodes launching")
        assert all(n["status"] != "up-to-date" for n in c.workers("cpu"))
        pid = int((c.head_dir / "pids" / "monitor.pid").read_text())
        os.kill(pid, signal.SIGKILL)  # mid-bootstrap
        time.sleep(1.0)
        r = cli("exec", str(c.path), f"{sys.executable} -m runtime.node start-monitor", home=c.home)
        assert r.returncode == 0, r.stdout + r.stderr
        runtime.get(refs, timeout=90)
        cpu_nodes = wait_for(lambda: [n for n in c.workers("cpu") if n["status"] == "up-to-date"] if all(
            n["status"] == "up-to-date" for n in c.workers("cpu")) else None, what="both cpu nodes up-to-date")
        assert len(cpu_nodes) == 2
        launched = [i for e in c.events() if e["event"] == "launch" for i in e["nodes"]]
        assert sorted(launched) == sorted(n["id"] for n in cpu_nodes)  # no duplicate launch, no leak
        adopted = {e["node"] for e in c.events() if e["event"] == "adopt"}
        assert adopted and adopted <= set(launched)  # the new monitor finished what the dead one started
    finally:
        c.down()


def test_scale_down_never_kills_a_busy_node(tmp_path):
    # an idle timeout of 0.6 s: far shorter than the task, so only "busy" keeps the node alive
    c = Up(tmp_path, _config("busy", idle_timeout_minutes=0.01))
    try:
        long = cpu_task.remote(4.0)
        node = wait_for(lambda: [n["id"] for n in c.workers(status="up-to-date")], what="a worker")[0]
        result = runtime.get(long, timeout=60)
        finished = time.time()
        assert result == node  # it ran to the end on the node it started on (a killed node would requeue it)
        killed_early = [e for e in c.events() if e["event"] == "terminate" and e["node"] == node
                        and e["ts"] < finished]
        assert killed_early == []
        wait_for(lambda: c.workers() == [], timeout=60, what="scale-down after the work")
    finally:
        c.down()
