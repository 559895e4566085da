"""An on-prem pool of VM twins in Ray's own form, autoscaled by the head: the laptop reaches the head on
port 22 only, and its state, config and key are invisible to every twin."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

import runtime
from tests.infra import cli, cluster_status, wait_for, write_config
from tests.infra.dashboard import Dashboard
from tests.infra.twins import onprem_config

CLUSTER = "onprem-twins"


@pytest.fixture(scope="module")
def pool(twin_net, ssh_lab, tmp_path_factory):
    head = twin_net.twin("op-head", twin_net.ip(11))
    workers = [twin_net.twin(f"op-w{i}", twin_net.ip(12 + i)) for i in (1, 2)]
    head.block_laptop()
    laptop, key = twin_net.laptop_for(CLUSTER, ssh_lab.client_key)
    (laptop / "data").mkdir(exist_ok=True)
    (laptop / "data" / "weights.txt").write_text("w=1\n")
    data = onprem_config(CLUSTER, head, workers, key, file_mounts={"~/data": "./data"})
    path = write_config(laptop / "cluster.yaml", data)
    home = laptop / "home"
    old_home = os.environ.get("LAUNCH_HOME")
    os.environ["LAUNCH_HOME"] = str(home)  # for runtime.init() in this process
    yield {"path": path, "home": home, "head": head, "workers": workers, "shared": tmp_path_factory.mktemp("shared")}
    runtime.shutdown()
    cli("down", str(path), "--yes", home=home, timeout=180)
    for t in (head, *workers):
        twin_net.remove(t.name)
    if old_home is None:
        os.environ.pop("LAUNCH_HOME", None)
    else:
        os.environ["LAUNCH_HOME"] = old_home


def _status(pool) -> dict:
    return cluster_status(pool["path"], pool["home"])


def test_the_heads_autoscaler_claims_sets_up_and_returns_pool_hosts(pool):
    path, home, head, workers = pool["path"], pool["home"], pool["head"], pool["workers"]
    r = cli("up", str(path), "--yes", home=home, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    st = _status(pool)
    assert [(n["kind"], n["node_type"]) for n in st["nodes"]] == [("head", "local.cluster.node")]
    assert st["nodes"][0]["runtime"] == "alive" and st["autoscaler"]["running"]
    # the head holds what its control plane needs; the pool's claims are there too
    held = head.root / ".launch-runtime" / "cluster"
    assert (held / "ssh_key").stat().st_mode & 0o777 == 0o600
    assert json.loads((held / "spec.json").read_text())["on_head"] is True
    assert json.loads((head.root / ".launch-runtime" / "pool" / f"{CLUSTER}.json").read_text()).keys() == {
        f"{head.ip}:22"}

    # the laptop reaches the head service through SSH only (its port is closed to the laptop)
    runtime.init(cluster=CLUSTER)
    shared = pool["shared"]

    @runtime.remote(num_cpus=2)
    def where(n_hosts: int, shared_dir: str):
        """Blocks until n_hosts tasks run at once: the work must be spread over that many hosts."""
        import pathlib
        import socket
        import time
        d = pathlib.Path(shared_dir)
        (d / socket.gethostname()).write_text(open(pathlib.Path.home() / "data" / "weights.txt").read())
        deadline = time.time() + 180
        while len(list(d.iterdir())) < n_hosts and time.time() < deadline:
            time.sleep(0.2)
        return socket.gethostname()

    # each host has the machine's 2 CPUs: three 2-CPU tasks at once need the head and two workers
    refs = [where.remote(3, str(shared)) for _ in range(3)]
    assert sorted(runtime.get(refs, timeout=240)) == ["op-head", "op-w1", "op-w2"]
    assert {p.read_text() for p in shared.iterdir()} == {"w=1\n"}  # file mounts reached the workers, from the head

    # on any node, the runtime is at hand: `python3` imports it and init() needs no arguments
    st = _status(pool)
    worker_ids = [n["id"] for n in st["nodes"] if n["kind"] == "worker"]
    assert len(worker_ids) == 2
    probe = "python3 -c 'import runtime; print(len(runtime.init().cluster_state().nodes))'"
    for node in (None, worker_ids[0]):
        r = cli("exec", str(path), probe, *(["--node", node] if node else []), home=home)
        assert r.returncode == 0 and r.stdout.strip() == "3", r.stdout + r.stderr

    # jobs too go through the SSH tunnel
    script = pool["shared"].parent / "job.sh"
    script.write_text("echo job on $(hostname)\n")
    r = cli("submit", str(path), str(script), home=home)
    assert r.returncode == 0 and "job on op-" in r.stdout, r.stdout + r.stderr

    # idle workers go back to the pool: runtime stopped, nothing of the cluster left running there
    wait_for(lambda: len(_status(pool)["nodes"]) == 1, timeout=90, what="idle workers released")
    wait_for(lambda: all(w.processes() == [] for w in workers), timeout=15, what="workers' runtimes stopped")
    claims = json.loads((head.root / ".launch-runtime" / "pool" / f"{CLUSTER}.json").read_text())
    assert list(claims) == [f"{head.ip}:22"]


def test_after_the_head_machine_restarts_up_brings_it_back_and_readopts_the_workers(pool):
    path, home, head = pool["path"], pool["home"], pool["head"]
    data = yaml.safe_load(path.read_text())
    write_config(path, {**data, "min_workers": 1, "idle_timeout_minutes": 10})
    r = cli("up", str(path), "--yes", home=home, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (worker,) = [n["id"] for n in _status(pool)["nodes"] if n["kind"] == "worker"]

    runtime.shutdown()
    head.reboot()  # the head machine restarts: its runtime and autoscaler are gone, its disk is not
    r = cli("up", str(path), "--yes", home=home, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "runtime started" in r.stdout and "created" not in r.stdout
    st = _status(pool)
    assert [n["id"] for n in st["nodes"] if n["kind"] == "worker"] == [worker]  # the same worker, adopted
    assert all(n["runtime"] == "alive" for n in st["nodes"]) and st["autoscaler"]["running"]
    write_config(path, data)


def test_the_laptop_cannot_reach_the_head_service_directly(pool):
    info = json.loads((pool["home"] / "clusters" / CLUSTER / "cluster.json").read_text())
    host, port = info["head_address"].rsplit(":", 1)
    probe = f"import socket; s = socket.create_connection(({host!r}, {port}), timeout=2)"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert r.returncode != 0 and "timed out" in r.stderr  # dropped by the head's firewall: SSH is the way in


def test_the_dashboard_comes_through_ssh_and_its_port_is_not_reachable(pool):
    d = Dashboard(pool["path"], pool["home"])
    try:
        cookie = d.login()
        status, _, body = d.get("/api/overview", {"Cookie": cookie})
        overview = json.loads(body)
        assert status == 200 and overview["cluster"] == CLUSTER and overview["provider"] == "local"
        assert overview["nodes"] and all(n["status"] == "up-to-date" for n in overview["nodes"])
        # the head serves it on its loopback: from the laptop only the forward reaches it
        port = int((pool["head"].node_dir / "dashboard.address").read_text().rsplit(":", 1)[1])
        probe = f"import socket; s = socket.create_connection(({pool['head'].ip!r}, {port}), timeout=2)"
        assert subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode != 0
    finally:
        d.close()


def test_down_leaves_nothing_running_on_any_twin(pool):
    assert _memory_of(pool["head"])  # the head keeps a memory folder while it runs
    runtime.shutdown()  # closes this process's SSH tunnel to the head, too
    r = cli("down", str(pool["path"]), "--yes", home=pool["home"], timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    for t in (pool["head"], *pool["workers"]):
        try:
            wait_for(lambda: t.processes() == [], timeout=15)
        except AssertionError:
            raise AssertionError(f"left running on {t.name}: {t.processes()}") from None
    assert _status(pool)["nodes"] == []
    assert _memory_of(pool["head"]) == []  # the head's values in memory went with it (runtime/blobs.py)


def _memory_of(twin) -> list[str]:
    """The memory folders (/dev/shm, which twins share with this machine) of the stores of this twin's
    node (each names its store as the twin sees it: its own /root, its hostname)."""
    from core.shm import MEMORY_ROOT, OWNER_FILE

    found = []
    for folder in MEMORY_ROOT.glob(f"launch-{os.getuid()}-*"):
        try:
            if f"/nodes/{twin.name}/" in (folder / OWNER_FILE).read_text():
                found.append(folder.name)
        except OSError:
            continue
    return found
