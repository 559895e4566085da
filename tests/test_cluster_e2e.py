"""`launch up / status / exec / down` end to end on the local provider, through the real CLI."""

from __future__ import annotations

import copy
import json
import os
import signal
from pathlib import Path

import grpc
import pytest

from runtime.client import HeadClient
from tests.infra import cli, cluster_status, local_cluster, node_dir, processes_with_env, wait_for, write_config


def _node_markers(st: dict) -> list[str]:
    return [f"LAUNCH_LOCAL_NODE={n['id']}\0" for n in st["nodes"]]


@pytest.fixture
def cluster(tmp_path):
    """A config file, a LAUNCH_HOME, and a guaranteed `down` afterwards."""
    home = tmp_path / "home"
    (tmp_path / "payload").mkdir()
    (tmp_path / "payload" / "data.txt").write_text("v1\n")
    data = local_cluster("e2e", file_mounts={"~/payload": "./payload"})
    path = write_config(tmp_path / "cluster.yaml", data)
    yield path, home, data
    cli("down", str(path), "--yes", home=home)


def test_up_status_exec_idempotent_setup_change_down(cluster, tmp_path):
    path, home, data = cluster

    r = cli("up", str(path), "--yes", home=home)
    assert r.returncode == 0, r.stderr
    assert "head" in r.stdout and "created" in r.stdout

    st = cluster_status(path, home)
    assert [n["kind"] for n in st["nodes"]] == ["head", "worker"]
    assert all(n["status"] == "up-to-date" and n["runtime"] == "alive" for n in st["nodes"])
    head, worker = st["nodes"]
    assert head["resources_total"]["CPU"] == 1 and worker["resources_total"]["CPU"] == 2
    assert worker["node_type"] == "cpu"
    ids = [n["id"] for n in st["nodes"]]

    # the human table has the same nodes
    table = cli("status", str(path), home=home)
    assert table.returncode == 0 and all(i in table.stdout for i in ids) and "CPU 0/2" in table.stdout

    # exec streams output from the head, with file mounts and setup in place, and passes the exit code
    r = cli("exec", str(path), "cat ~/payload/data.txt; cat ~/setup.log; echo $HOME; exit 5", home=home)
    assert r.returncode == 5
    out = r.stdout.splitlines()
    assert out[0] == "v1" and out[1] == "setup-v1" and out[2].endswith(head["id"])

    # unchanged config: nothing is redone
    r = cli("up", str(path), "--yes", home=home)
    assert r.returncode == 0, r.stderr
    assert "nothing changed" in r.stdout
    assert cli("exec", str(path), "cat ~/setup.log", home=home).stdout.split() == ["setup-v1"]

    # a changed setup command re-runs setup on the same nodes (not replaced)
    changed = copy.deepcopy(data)
    changed["setup_commands"] = ["echo setup-v2 >> ~/setup.log"]
    write_config(path, changed)
    r = cli("up", str(path), "--yes", home=home)
    assert r.returncode == 0, r.stderr
    assert "created" not in r.stdout and "set up" in r.stdout
    st2 = cluster_status(path, home)
    assert [n["id"] for n in st2["nodes"]] == ids
    assert all(n["runtime"] == "alive" for n in st2["nodes"])
    assert cli("exec", str(path), "cat ~/setup.log", home=home).stdout.split() == ["setup-v1", "setup-v2"]

    # a changed file mount is synced again
    (tmp_path / "payload" / "data.txt").write_text("v2\n")
    assert cli("up", str(path), "--yes", home=home).returncode == 0
    assert cli("exec", str(path), "cat ~/payload/data.txt", home=home).stdout == "v2\n"

    markers = _node_markers(st2)
    r = cli("down", str(path), "--yes", home=home)
    assert r.returncode == 0, r.stderr
    assert "2 node(s) terminated" in r.stdout
    assert all(processes_with_env(m) == [] for m in markers), "a process of the cluster is left after down"
    assert cluster_status(path, home)["nodes"] == []
    assert not (home / "clusters" / "e2e" / "token").exists()


def test_changed_node_config_replaces_the_node(cluster):
    path, home, data = cluster
    assert cli("up", str(path), "--yes", home=home).returncode == 0
    before = {n["kind"]: n["id"] for n in cluster_status(path, home)["nodes"]}
    changed = copy.deepcopy(data)
    changed["available_node_types"]["cpu"]["node_config"] = {"flavour": "bigger"}
    write_config(path, changed)
    r = cli("up", str(path), "--yes", home=home)
    assert r.returncode == 0, r.stderr
    after = {n["kind"]: n["id"] for n in cluster_status(path, home)["nodes"]}
    assert after["head"] == before["head"]  # the head's node_config did not change
    assert after["worker"] != before["worker"]
    assert processes_with_env(f"LAUNCH_LOCAL_NODE={before['worker']}\0") == []


def test_outdated_node_not_replaced_without_confirmation(cluster):
    path, home, data = cluster
    assert cli("up", str(path), "--yes", home=home).returncode == 0
    changed = copy.deepcopy(data)
    changed["available_node_types"]["head"]["node_config"] = {"flavour": "bigger"}
    write_config(path, changed)
    r = cli("up", str(path), home=home)  # no --yes and no terminal to ask
    assert r.returncode == 1
    assert "outdated" in r.stderr and "Traceback" not in r.stderr
    assert len(cluster_status(path, home)["nodes"]) == 2


def test_dead_agent_is_restarted_by_the_supervisor_and_a_dead_node_runtime_by_up(cluster):
    path, home, _ = cluster
    assert cli("up", str(path), "--yes", home=home).returncode == 0
    worker = cluster_status(path, home)["nodes"][1]
    pids = node_dir(home / "clusters" / "e2e" / "local" / "nodes" / worker["id"]) / "pids"

    # the agent dies: the node's supervisor starts it again, and it registers again
    old = int((pids / "agent.pid").read_text())
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: (pids / "agent.pid").exists() and int((pids / "agent.pid").read_text()) != old,
             timeout=15, what="the supervisor to restart the agent")
    wait_for(lambda: all(n["runtime"] == "alive" for n in cluster_status(path, home)["nodes"]), timeout=30,
             what="the restarted agent to register")

    # everything of the node's runtime dies (as in a reboot): `up` starts it again
    for name in ("supervisor", "agent"):
        os.kill(int((pids / f"{name}.pid").read_text()), signal.SIGKILL)
    r = cli("up", str(path), "--yes", home=home)
    assert r.returncode == 0, r.stderr
    assert f"worker {worker['id']}: runtime started" in r.stdout
    assert all(n["runtime"] == "alive" for n in cluster_status(path, home)["nodes"])


def test_failing_head_setup_is_reported_and_fails_up(tmp_path):
    home = tmp_path / "home"
    path = write_config(tmp_path / "c.yaml", local_cluster(
        "failing", head_setup_commands=["echo about to fail", "echo the last words >&2; exit 3"]))
    try:
        r = cli("up", str(path), "--yes", home=home)
        assert r.returncode == 1
        err_lines = [l for l in r.stderr.splitlines() if l.startswith("error:")]
        assert len(err_lines) == 1
        assert "failed at setting-up" in err_lines[0] and "exited 3" in err_lines[0]
        assert "the last words" in err_lines[0]
        assert "Traceback" not in r.stderr
        (head,) = cluster_status(path, home)["nodes"]
        assert head["status"] == "update-failed"
        log = (home / "clusters" / "failing" / "logs" / f"{head['id']}.log").read_text()
        assert "about to fail" in log and "FAILED at setting-up" in log
    finally:
        cli("down", str(path), "--yes", home=home)


def test_failing_worker_does_not_fail_up(tmp_path):
    home = tmp_path / "home"
    # static cluster: with the autoscaler on, the failed worker would (rightly) be replaced at once
    path = write_config(tmp_path / "c.yaml", local_cluster("wfail", worker_setup_commands=["exit 9"],
                                                           autoscaler={"enabled": False}))
    try:
        r = cli("up", str(path), "--yes", home=home)
        assert r.returncode == 0, r.stderr
        assert "failed" in r.stderr and "exited 9" in r.stderr
        statuses = {n["kind"]: (n["status"], n["runtime"]) for n in cluster_status(path, home)["nodes"]}
        assert statuses == {"head": ("up-to-date", "alive"), "worker": ("update-failed", "not registered")}
    finally:
        cli("down", str(path), "--yes", home=home)


def test_live_head_refuses_callers_without_the_token_and_token_stays_secret(cluster):
    path, home, _ = cluster
    assert cli("up", str(path), "--yes", home=home).returncode == 0
    cdir = home / "clusters" / "e2e"
    token_file = cdir / "token"
    assert (token_file.stat().st_mode & 0o777) == 0o600
    token = token_file.read_text().strip()
    address = json.loads((cdir / "cluster.json").read_text())["head_address"]

    with HeadClient(address, "not-the-token") as client, pytest.raises(grpc.RpcError) as e:
        client.cluster_state()
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with HeadClient(address, token) as client:
        assert len(client.cluster_state().nodes) == 2

    # never in a log, never on a command line
    for log in cdir.rglob("*.log"):
        assert token not in log.read_text(errors="replace"), log
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = open(f"/proc/{entry.name}/cmdline", "rb").read()
            except OSError:
                continue
            assert token.encode() not in cmdline
    node_cfgs = list(cdir.glob("local/nodes/*/.launch-runtime/nodes/*/node.json"))
    assert len(node_cfgs) == 2 and all((p.stat().st_mode & 0o777) == 0o600 for p in node_cfgs)
    # what the runtime and setup say stays its user's: folders 0700, logs 0600, on the nodes and here
    runtime_dirs = list(cdir.glob("local/nodes/*/.launch-runtime"))
    logs = [*cdir.glob("local/nodes/*/.launch-runtime/nodes/*/logs/*.log"), *cdir.glob("logs/*.log")]
    assert len(runtime_dirs) == 2 and all(d.stat().st_mode & 0o777 == 0o700 for d in runtime_dirs)
    assert len(logs) >= 5 and all(p.stat().st_mode & 0o777 == 0o600 for p in logs), logs
    assert all(p.parent.stat().st_mode & 0o777 == 0o700 for p in logs)


def test_commands_on_a_cluster_that_is_not_up(tmp_path):
    path = write_config(tmp_path / "c.yaml", local_cluster("absent"))
    home = tmp_path / "home"
    script = tmp_path / "job.py"
    script.write_text("print(1)\n")
    for command in (["exec", str(path), "true"], ["submit", str(path), str(script)], ["job", "list", str(path)],
                    ["get-head-ip", str(path)], ["rsync-down", str(path), "/tmp/a", str(tmp_path)]):
        r = cli(*command, home=home)
        assert r.returncode == 1 and r.stderr == ("error: cluster 'absent' is not up (no head node); run "
                                                  "`launch up` first\n"), (command, r.stderr)
    r = cli("status", str(path), home=home)
    assert r.returncode == 0 and "has no nodes" in r.stdout
    r = cli("down", str(path), home=home)  # no --yes, no terminal: refuses
    assert r.returncode == 1 and "not confirmed" in r.stderr
    r = cli("down", str(path), "--yes", home=home)
    assert r.returncode == 0 and "0 node(s) terminated" in r.stdout


def test_exec_start_stop_attach_rsync_on_local_nodes(tmp_path):
    import sys

    import pexpect

    from tests.infra import ROOT

    home = tmp_path / "home"
    data = local_cluster("cmds")
    data["available_node_types"]["cpu"]["min_workers"] = 0
    path = write_config(tmp_path / "c.yaml", data)
    try:
        # --start brings the cluster up first
        r = cli("exec", str(path), "echo started", "--start", home=home)
        assert r.returncode == 0 and r.stdout.endswith("started\n"), r.stderr
        assert cli("get-head-ip", str(path), home=home).stdout.strip() == "127.0.0.1"
        assert cli("get-worker-ips", str(path), home=home).stdout == ""

        src = tmp_path / "src"
        src.mkdir()
        (src / "f.txt").write_text("payload\n")
        assert "1 file(s) sent" in cli("rsync-up", str(path), str(src), "~/in", home=home).stdout
        r = cli("rsync-down", str(path), "~/in/f.txt", str(tmp_path / "out.txt"), home=home)
        assert r.returncode == 0 and (tmp_path / "out.txt").read_text() == "payload\n"

        env = {**os.environ, "LAUNCH_HOME": str(home)}
        child = pexpect.spawn(sys.executable, ["-m", "launcher", "attach", str(path)], cwd=str(ROOT), env=env,
                              timeout=30, encoding="utf-8")
        child.sendline("cat ~/in/f.txt; exit 6")
        child.expect("payload")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 6

        r = cli("attach", str(path), "--new", home=home)
        assert r.returncode == 1 and "--new needs --tmux or --screen" in r.stderr
        r = cli("exec", str(path), "true", "--tmux", "--screen", home=home)
        assert r.returncode == 1 and "choose one" in r.stderr
        r = cli("exec", str(path), "true", "--node", "local-nope", home=home)
        assert r.returncode == 1 and "no node 'local-nope'" in r.stderr

        # --stop tears the cluster down after the command, which still gives its exit code
        r = cli("exec", str(path), "exit 2", "--stop", home=home)
        assert r.returncode == 2 and "tearing down" in r.stderr
        assert cluster_status(path, home)["nodes"] == []
    finally:
        cli("down", str(path), "--yes", home=home)


def test_while_the_head_is_away_commands_and_the_api_say_so_in_one_line(cluster):
    import runtime
    from runtime.client import HeadUnavailable

    path, home, _ = cluster
    assert cli("up", str(path), "--yes", home=home).returncode == 0
    head = cluster_status(path, home)["nodes"][0]
    pids = node_dir(home / "clusters" / "e2e" / "local" / "nodes" / head["id"]) / "pids"
    for name in ("supervisor", "head"):  # nothing restarts the head service now
        os.kill(int((pids / f"{name}.pid").read_text()), signal.SIGKILL)
    info = json.loads((home / "clusters" / "e2e" / "cluster.json").read_text())
    wait_for(lambda: not _answers(info["head_address"]), timeout=10, what="the head service gone")

    for args in (("job", "list", str(path)), ("submit", str(path), "examples/hello_tasks.py")):
        r = cli(*args, home=home)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().count("\n") == 0 and "does not answer (UNAVAILABLE)" in r.stderr
    runtime.init(address=info["head_address"], token=(home / "clusters" / "e2e" / "token").read_text().strip())
    try:
        with pytest.raises(HeadUnavailable, match="does not answer"):
            runtime.get(runtime.remote(lambda: 1).remote(), timeout=5)
    finally:
        runtime.shutdown()


def _answers(address: str) -> bool:
    import socket

    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        return True
    except OSError:
        return False


def test_file_mounts_synced_continuously_reach_workers_without_their_setup(tmp_path):
    """Ray's file_mounts_sync_continuously: what changes in the file mounts (by `up`, or `rsync-up` to the
    head) reaches the workers from the head, and no setup command runs again for it."""
    home = tmp_path / "home"
    (tmp_path / "payload").mkdir()
    (tmp_path / "payload" / "data.txt").write_text("v1\n")
    data = local_cluster("mountsync", file_mounts={"~/payload": "./payload"}, file_mounts_sync_continuously=True)
    path = write_config(tmp_path / "cluster.yaml", data)
    try:
        assert cli("up", str(path), "--yes", home=home).returncode == 0
        worker = next(n["id"] for n in cluster_status(path, home)["nodes"] if n["kind"] == "worker")
        worker_home = home / "clusters" / "mountsync" / "local" / "nodes" / worker

        def on_worker(name: str) -> str:
            f = worker_home / "payload" / name
            return f.read_text() if f.exists() else ""

        assert on_worker("data.txt") == "v1\n"
        (tmp_path / "payload" / "data.txt").write_text("v2\n")
        r = cli("up", str(path), "--yes", home=home)
        assert r.returncode == 0, r.stdout + r.stderr
        wait_for(lambda: on_worker("data.txt") == "v2\n", timeout=60, what="the changed mount on the worker")
        (tmp_path / "extra.txt").write_text("from rsync-up\n")
        assert cli("rsync-up", str(path), str(tmp_path / "extra.txt"), "~/payload/extra.txt", home=home).returncode == 0
        wait_for(lambda: on_worker("extra.txt") == "from rsync-up\n", timeout=60, what="rsync-up reaching the worker")
        assert (worker_home / "setup.log").read_text().split() == ["setup-v1"]  # its setup ran once
        assert worker in {n["id"] for n in cluster_status(path, home)["nodes"]}  # the same worker, not replaced
    finally:
        cli("down", str(path), "--yes", home=home)
