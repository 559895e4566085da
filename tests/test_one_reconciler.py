"""The head's monitor is the cluster's one reconciler: `up` ships the spec, signals it and waits for it to
converge; `down` has it remove the workers. Driven through the real CLI on local clusters."""

from __future__ import annotations

import json
import os
import signal

from tests.infra import cli, cluster_status, local_cluster, node_dir, processes_with_env, wait_for, write_config


class _Cluster:
    def __init__(self, tmp_path, data):
        self.data, self.home = data, tmp_path / "home"
        self.path = write_config(tmp_path / "c.yaml", data)
        self.cdir = self.home / "clusters" / data["cluster_name"]

    def up(self, *args: str):
        return cli("up", str(self.path), "--yes", *args, home=self.home, timeout=180)

    def write(self) -> None:
        write_config(self.path, self.data)

    def nodes(self) -> dict[str, dict]:
        return {n["id"]: n for n in cluster_status(self.path, self.home)["nodes"]}

    def workers(self) -> dict[str, dict]:
        return {i: n for i, n in self.nodes().items() if n["kind"] == "worker"}

    def node_home(self, node_id: str):
        return node_dir(self.cdir / "local" / "nodes" / node_id)

    def head_home(self):
        return self.node_home(json.loads((self.cdir / "cluster.json").read_text())["head_node_id"])

    def pid(self, node_id: str, daemon: str) -> int | None:
        path = self.node_home(node_id) / "pids" / f"{daemon}.pid"
        return int(path.read_text()) if path.exists() else None

    def events(self, kind: str) -> list[dict]:
        path = self.head_home() / "logs" / "autoscaler.log"
        return [e for line in path.read_text().splitlines() if (e := json.loads(line))["event"] == kind]

    def down(self):
        return cli("down", str(self.path), "--yes", home=self.home, timeout=180)


def test_up_is_carried_out_by_the_running_monitor_never_restarted(tmp_path):
    """Restart, setup change and a larger min_workers: each `up` is done by the same monitor process."""
    c = _Cluster(tmp_path, local_cluster("onerec", autoscaler={"tick_s": 5}))
    try:
        r = c.up()
        assert r.returncode == 0, r.stderr
        (worker,) = c.workers()
        head = json.loads((c.cdir / "cluster.json").read_text())["head_node_id"]
        monitor = c.pid(head, "monitor")
        agent = c.pid(worker, "agent")
        assert monitor is not None and agent is not None

        r = c.up("--restart-runtime")
        assert r.returncode == 0, r.stderr
        assert f"worker {worker}: runtime restarted" in r.stdout and "created" not in r.stdout
        assert c.pid(worker, "agent") != agent  # the worker's runtime restarted, by the monitor
        assert c.workers()[worker]["runtime"] == "alive"  # and registered again before `up` returned

        c.data["available_node_types"]["cpu"]["min_workers"] = 2
        c.data["worker_setup_commands"] = ["echo worker-v2 >> ~/worker.log"]
        c.write()
        r = c.up()
        assert r.returncode == 0, r.stderr
        assert "1 worker(s) of type cpu: created" in r.stdout and f"worker {worker}: set up" in r.stdout
        workers = c.workers()
        assert len(workers) == 2 and all(n["status"] == "up-to-date" and n["runtime"] == "alive"
                                         for n in workers.values())
        assert all((c.cdir / "local" / "nodes" / i / "worker.log").read_text() == "worker-v2\n" for i in workers)

        assert c.pid(head, "monitor") == monitor  # signalled, never stopped or restarted by `up`
        rounds = c.events("converged")
        assert len({e["generation"] for e in rounds}) == 3  # each `up` a generation the monitor converged on

        r = c.up()  # nothing changed: nothing done, the same nodes
        assert r.returncode == 0 and "nothing changed" in r.stdout, r.stdout + r.stderr
        assert set(c.workers()) == set(workers)
    finally:
        c.down()


def test_a_static_cluster_is_sized_by_min_workers_and_repaired_by_the_next_up(tmp_path):
    marker = tmp_path / "fixed"
    data = local_cluster("static", autoscaler={"enabled": False, "tick_s": 0.3},
                         worker_setup_commands=[f"test -f {marker} || {{ echo not yet fixed >&2; exit 4; }}"])
    c = _Cluster(tmp_path, data)
    try:
        r = c.up()
        assert r.returncode == 0, r.stderr  # a worker failing does not fail `up`
        assert "failed at setting-up" in r.stderr and "not yet fixed" in r.stderr
        (worker,) = c.workers()
        assert c.workers()[worker]["status"] == "update-failed"

        # the monitor keeps a static cluster's failed node as it is (for its log), ticks after ticks
        status = c.head_home() / "autoscaler-status.json"
        seen = json.loads(status.read_text())["updated_at"]
        wait_for(lambda: json.loads(status.read_text())["updated_at"] > seen + 2.0, what="2 s of ticks")
        after = c.workers()
        assert list(after) == [worker] and after[worker]["status"] == "update-failed"

        marker.touch()
        r = c.up()  # the next `up` repairs it in place
        assert r.returncode == 0, r.stderr
        assert f"worker {worker}: set up" in r.stdout and "created" not in r.stdout
        assert c.workers()[worker]["status"] == "up-to-date" and c.workers()[worker]["runtime"] == "alive"
        assert c.events("launch") == [e for e in c.events("launch") if e["reason"] == "min_workers"]
    finally:
        c.down()


def test_down_with_the_monitor_dead_removes_every_node_from_the_laptop(tmp_path):
    c = _Cluster(tmp_path, local_cluster("deadmon"))
    r = c.up()
    assert r.returncode == 0, r.stderr
    nodes = list(c.nodes())
    head = json.loads((c.cdir / "cluster.json").read_text())["head_node_id"]
    os.kill(c.pid(head, "supervisor"), signal.SIGKILL)  # nothing starts the monitor again
    os.kill(c.pid(head, "monitor"), signal.SIGKILL)
    r = c.down()
    assert r.returncode == 0, r.stderr
    assert "the autoscaler is not running on the head" in r.stdout + r.stderr
    assert f"{len(nodes)} node(s) terminated" in r.stdout
    assert all(processes_with_env(f"LAUNCH_LOCAL_NODE={n}\0") == [] for n in nodes)


def test_down_is_the_monitor_removing_the_workers(tmp_path):
    c = _Cluster(tmp_path, local_cluster("monrm"))
    r = c.up()
    assert r.returncode == 0, r.stderr
    workers = list(c.workers())
    r = c.down()
    assert r.returncode == 0, r.stderr
    assert f"the head's autoscaler removed {len(workers)} worker(s)" in r.stdout + r.stderr
    assert "removing them from here" not in r.stdout + r.stderr
    assert cluster_status(c.path, c.home)["nodes"] == []


def test_only_demand_beyond_what_the_last_tick_planned_for_wakes_the_monitor():
    from autoscaler.demand_watch import demand_counts as _demand_counts, grew as _grew
    from runtime.proto import head_pb2 as pb

    def state(*shapes, groups=()):
        return pb.WatchDemandReply(
            demand=[pb.ShapeDemand(shape=pb.Resources(amounts=s), count=c) for s, c in shapes],
            groups=[pb.GroupDemand(bundles=[pb.Resources(amounts=b) for b in bs], strategy="PACK", count=c)
                    for bs, c in groups])

    planned = _demand_counts(state(({"CPU": 1}, 3)))
    assert not _grew(_demand_counts(state(({"CPU": 1}, 2))), planned)  # a backlog draining
    assert not _grew(_demand_counts(state(({"CPU": 1}, 3))), planned)
    assert _grew(_demand_counts(state(({"CPU": 1}, 4))), planned)  # more of it
    assert _grew(_demand_counts(state(({"CPU": 1}, 1), ({"GPU": 1}, 1))), planned)  # a new shape
    assert _grew(_demand_counts(state(groups=[([{"CPU": 2}], 1)])), planned)  # a placement group
    # work pinned to a node waits for that node: no launch serves it
    assert not _grew(_demand_counts(state(({"CPU": 1, "node:abc": 0.001}, 5))), {})
