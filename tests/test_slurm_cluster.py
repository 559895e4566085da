"""A whole cluster on the shared real Slurm, as a user on a login host meets it: `up` puts the head on this
machine and no worker anywhere; work that needs more nodes than exist makes the head's autoscaler submit
holder jobs (one that cannot start yet is shown pending with Slurm's reason), the tasks run inside the
allocations (a GPU task sees only its job's GPU), a holder job nearing its time limit is told by Slurm
(its node drained, a replacement submitted at once) and, once killed, its task runs again on the
replacement without costing a retry; idle allocations are cancelled, and `down` leaves an empty queue."""

from __future__ import annotations

import json
import os

import pytest

import runtime
from tests.infra import cli, cluster_status, wait_for, write_config

CLUSTER = "slurm-e2e"


@pytest.fixture
def cluster(slurm, tmp_path):
    old = {k: os.environ.get(k) for k in ("LAUNCH_HOME", "SLURM_CONF")}
    os.environ.update(LAUNCH_HOME=str(tmp_path / "home"), SLURM_CONF=str(slurm.conf))
    data = {
        "cluster_name": CLUSTER,
        "max_workers": 5,
        "idle_timeout_minutes": 0.1,
        "provider": {"type": "slurm", "node_root": str(tmp_path / "nodes"), "queue_wait_s": 240, "notice_s": 20},
        "autoscaler": {"tick_s": 0.5},
        "runtime": {"heartbeat_interval_s": 0.3, "node_timeout_s": 3},
        "available_node_types": {
            "head": {"resources": {"CPU": 0}},
            # killed by Slurm a minute after it starts: a node lost the way HPC nodes are lost
            "short": {"node_config": {"cpus": 1, "time_limit": "1"}, "resources": {"CPU": 1, "short": 1},
                      "max_workers": 2},
            "cpu": {"node_config": {"cpus": 1, "memory": "200M"}, "max_workers": 3},
            "gpu": {"node_config": {"cpus": 1, "gres": "gpu:1", "partition": "gpu"}, "max_workers": 1},
        },
        "head_node_type": "head",
    }
    path = write_config(tmp_path / "hpc.yaml", data)
    try:
        yield path, tmp_path / "home", slurm
    finally:
        runtime.shutdown()
        cli("down", str(path), "--yes", home=tmp_path / "home", timeout=180)
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _work(marker_dir: str):
    @runtime.remote(num_cpus=1, resources={"short": 1}, max_retries=0)
    def outlive_the_allocation():
        """The first attempt runs past its allocation's time limit; the rerun returns at once."""
        import os
        import time
        marker = os.path.join(marker_dir, "first-attempt")
        if not os.path.exists(marker):
            open(marker, "w").write(os.environ["SLURM_JOB_ID"])
            time.sleep(600)
        return os.environ["SLURM_JOB_ID"]

    @runtime.remote(num_cpus=1, num_gpus=1)
    def on_gpu():
        import os
        return os.environ["SLURM_JOB_ID"], os.environ["CUDA_VISIBLE_DEVICES"], os.environ["HOME"]

    @runtime.remote(num_cpus=1)
    def on_cpu(sleep_s):
        import os
        import time
        time.sleep(sleep_s)
        return os.environ["SLURM_JOB_ID"]

    return outlive_the_allocation, on_gpu, on_cpu


def test_work_borrows_allocations_and_gives_them_back(cluster, tmp_path):
    path, home, slurm = cluster
    r = cli("up", str(path), "--yes", home=home, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert slurm.queue() == []  # min_workers 0: the head is this machine, nothing is borrowed yet
    runtime.init(cluster=CLUSTER)
    outlive, on_gpu, on_cpu = _work(str(tmp_path))

    # the time-limited node first: its minute runs while the rest of the test goes on
    doomed = outlive.remote()
    first_job = wait_for(lambda: (tmp_path / "first-attempt").exists() and (tmp_path / "first-attempt").read_text(),
                         timeout=120, what="the task running in its time-limited allocation")

    # five single-CPU tasks and a GPU task on a 4-CPU Slurm node that already holds one allocation:
    # holder jobs are submitted; those that do not fit wait in the queue, shown with Slurm's reason
    cpu_refs = [on_cpu.remote(4) for _ in range(5)]
    gpu_ref = on_gpu.remote()
    wait_for(lambda: [n for n in cluster_status(path, home)["nodes"]
                      if n["detail"] in ("queued in Slurm (Resources)", "queued in Slurm (Priority)")],
             timeout=60, what="a holder job waiting in the queue for resources")
    shown = cli("status", str(path), home=home)
    assert shown.returncode == 0 and "queued in Slurm" in shown.stdout, shown.stdout

    gpu_job, cuda, gpu_home = runtime.get(gpu_ref, timeout=240)
    assert cuda in ("0", "1") and gpu_home.endswith(f"/{CLUSTER}/{gpu_job}")  # one of the node's two GPUs
    cpu_jobs = runtime.get(cpu_refs, timeout=240)
    assert first_job not in cpu_jobs and len(set(cpu_jobs)) >= 2  # spread over several allocations

    # commands reach an allocation with srun, from the laptop's side too
    r = cli("exec", str(path), "--node", gpu_job, "echo job=$SLURM_JOB_ID gpus=$CUDA_VISIBLE_DEVICES", home=home)
    assert r.returncode == 0 and f"job={gpu_job}" in r.stdout, r.stdout + r.stderr

    # Slurm signals the first allocation 20 s before its time limit: the node is drained and a replacement
    # submitted while it runs; at the limit Slurm ends it, and its task runs again on the replacement,
    # which costs none of its retries (it has none)
    rerun_job = runtime.get(doomed, timeout=240)
    assert rerun_job != first_job
    # (the replacement was up before the limit: the rerun may end while Slurm still completes the old job)
    wait_for(lambda: first_job not in slurm.queue(), timeout=60, what="the time-limited job out of the queue")
    (log,) = tmp_path.rglob("autoscaler.log")  # the head's, on this login host
    events = [json.loads(line) for line in log.open()]
    (notice,) = [e for e in events if e["event"] == "preempt-notice" and e.get("node") == first_job]
    assert f"Slurm job {first_job} ends at" in notice["reason"]

    # idle allocations are given back; `down` (the fixture's) leaves the queue empty
    wait_for(lambda: [n["kind"] for n in cluster_status(path, home)["nodes"]] == ["head"], timeout=120,
             what="idle allocations cancelled")
    wait_for(lambda: slurm.queue() == [], timeout=30, what="an empty queue")
    r = cli("down", str(path), "--yes", home=home, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert slurm.queue() == [] and not list((tmp_path / "nodes").rglob("node.json"))


def test_the_head_can_be_an_allocation_of_its_own(slurm, tmp_path, monkeypatch):
    """`provider.head: allocation`: the head is a holder job too (its node type's request, a long time
    limit); the launcher reaches its service at the allocation's address, its autoscaler submits the
    workers from inside the allocation, and `down` empties the queue."""
    monkeypatch.setenv("LAUNCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    path = write_config(tmp_path / "alloc.yaml", {
        "cluster_name": "slurm-alloc", "max_workers": 1, "idle_timeout_minutes": 0.1,
        "provider": {"type": "slurm", "node_root": str(tmp_path / "nodes"), "head": "allocation"},
        "autoscaler": {"tick_s": 0.5},
        "available_node_types": {
            "head": {"node_config": {"cpus": 1, "time_limit": "7-00:00:00"}, "resources": {"CPU": 0}},
            "cpu": {"node_config": {"cpus": 1}, "max_workers": 1},
        },
        "head_node_type": "head",
    })
    home = tmp_path / "home"
    try:
        r = cli("up", str(path), "--yes", home=home, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        (head,) = cluster_status(path, home)["nodes"]
        assert head["kind"] == "head" and head["id"] in slurm.queue() and head["runtime"] == "alive"
        runtime.init(cluster="slurm-alloc")

        @runtime.remote(num_cpus=1)
        def where():
            import os
            return os.environ["SLURM_JOB_ID"]

        worker_job = runtime.get(where.remote(), timeout=240)
        assert worker_job != head["id"] and worker_job in slurm.queue()
    finally:
        runtime.shutdown()
        r = cli("down", str(path), "--yes", home=home, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: slurm.queue() == [], timeout=30, what="an empty queue")


def test_allocations_on_other_hosts_reach_the_head_on_the_login_hosts_address(slurm_twins, tmp_path, monkeypatch):
    """Compute nodes that are other hosts (VM twins, one slurmd each): the head on this login host binds
    the address it reaches slurmctld from, the agents in the twins' allocations register there, work
    runs on both hosts, and `down` empties the queue."""
    monkeypatch.setenv("LAUNCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SLURM_CONF", str(slurm_twins.conf))
    path = write_config(tmp_path / "twins.yaml", {
        "cluster_name": "slurm-twins", "max_workers": 2, "idle_timeout_minutes": 0.1,
        "provider": {"type": "slurm", "node_root": str(tmp_path / "nodes")},
        "autoscaler": {"tick_s": 0.5},
        "available_node_types": {
            "head": {"resources": {"CPU": 0}},
            # extra sbatch options as a site would write them: CPU nodes off the GPU host
            "cpu": {"node_config": {"cpus": 2, "sbatch_options": ["--exclude=hpc2"]},
                    "resources": {"CPU": 2, "cpu_node": 1}, "max_workers": 1},
            "gpu": {"node_config": {"cpus": 2, "gres": "gpu:2"}, "max_workers": 1},
        },
        "head_node_type": "head",
    })
    home = tmp_path / "home"
    try:
        r = cli("up", str(path), "--yes", home=home, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        (head,) = cluster_status(path, home)["nodes"]
        runtime.init(cluster="slurm-twins")

        @runtime.remote(num_cpus=2, resources={"cpu_node": 1})
        def cpu_host():
            import socket
            return socket.gethostname()

        @runtime.remote(num_cpus=1, num_gpus=2)
        def gpu_host():
            import os
            import socket
            return socket.gethostname(), os.environ["CUDA_VISIBLE_DEVICES"], os.environ["LAUNCH_HEAD_ADDRESS"]

        cpu_at, (gpu_at, cuda, head_address) = runtime.get([cpu_host.remote(), gpu_host.remote()], timeout=240)
        assert {cpu_at, gpu_at} == {"hpc1", "hpc2"} and gpu_at == "hpc2" and cuda == "0,1"
        assert head_address.split(":")[0] == head["ip"] != "127.0.0.1"  # the bridge address, reachable from the twins
    finally:
        runtime.shutdown()
        r = cli("down", str(path), "--yes", home=home, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: slurm_twins.queue() == [], timeout=30, what="an empty queue")


def test_a_head_on_another_login_host_over_ssh(slurm_twins, twin_net, ssh_lab, tmp_path_factory):
    """`provider.head_ip`: the laptop (no Slurm of its own needed) reaches a login host over SSH only;
    the head runs there, sbatch/squeue/scancel run there (from the laptop over SSH for `up` and `down`,
    locally for the head's autoscaler), and the work runs in allocations on the compute twins."""
    import runtime

    login = twin_net.twin("login1", twin_net.ip(33))
    laptop, key = twin_net.laptop_for("slurm-login", ssh_lab.client_key)
    nodes = tmp_path_factory.mktemp("slurm-login-nodes")  # on the shared filesystem, not the laptop's
    path = write_config(laptop / "hpc.yaml", {
        "cluster_name": "slurm-login", "max_workers": 1, "idle_timeout_minutes": 0.1,
        "provider": {"type": "slurm", "head_ip": login.ip, "slurm_conf": str(slurm_twins.conf),
                     "node_root": str(nodes)},
        "auth": {"ssh_user": "root", "ssh_private_key": str(key)},
        "autoscaler": {"tick_s": 0.5},
        "available_node_types": {"head": {"resources": {"CPU": 0}},
                                 "cpu": {"node_config": {"cpus": 1}, "max_workers": 1}},
        "head_node_type": "head",
    })
    home = laptop / "home"
    old_home = os.environ.get("LAUNCH_HOME")
    os.environ["LAUNCH_HOME"] = str(home)
    try:
        r = cli("up", str(path), "--yes", home=home, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        (head,) = cluster_status(path, home)["nodes"]
        assert head["id"] == f"{login.ip}:22" and head["runtime"] == "alive"
        runtime.init(cluster="slurm-login")  # through an SSH tunnel to the login host

        @runtime.remote(num_cpus=1)
        def where():
            import os
            import socket
            return socket.gethostname(), os.environ["SLURM_JOB_ID"]

        host, job = runtime.get(where.remote(), timeout=240)
        assert host in ("hpc1", "hpc2") and job in slurm_twins.queue()
    finally:
        runtime.shutdown()
        r = cli("down", str(path), "--yes", home=home, timeout=180)
        os.environ.pop("LAUNCH_HOME") if old_home is None else os.environ.__setitem__("LAUNCH_HOME", old_home)
        twin_net.remove("login1")
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: slurm_twins.queue() == [], timeout=30, what="an empty queue")
