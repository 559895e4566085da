"""Hosts that share one home directory (an NFS home, as on most on-prem and HPC clusters) each run their
own node: per-node files live under the node's hostname (core.paths.NODE_DIR), the installed runtime is
shared, and `down` leaves no token or head address on any of them. VM twins whose /root is one folder."""

from __future__ import annotations

import json

import pytest

from tests.infra import cli, cluster_status, job_result, wait_for, write_config
from tests.infra.twins import onprem_config

CLUSTER = "nfs"

# one 1-CPU bundle per host (STRICT_SPREAD): all three nodes registered and run work
JOB = '''
import json, os, socket
import runtime
from runtime.placement_group import PlacementGroupSchedulingStrategy, placement_group

runtime.init()
pg = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")
runtime.get(pg.ready(), timeout=300)


@runtime.remote(num_cpus=1)
def where():
    return socket.gethostname(), open(os.path.expanduser("~/data/weights.txt")).read().strip()


refs = [where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, i)).remote() for i in range(3)]
print("RESULT " + json.dumps(sorted(runtime.get(refs, timeout=300))))
'''


@pytest.fixture(scope="module")
def nfs(twin_net, ssh_lab, tmp_path_factory):
    home_dir = tmp_path_factory.mktemp("nfs-home")
    head = twin_net.twin("nfs-head", twin_net.ip(51), shared_home=home_dir)
    workers = [twin_net.twin(f"nfs-w{i}", twin_net.ip(51 + i), shared_home=home_dir) for i in (1, 2)]
    laptop, key = twin_net.laptop_for(CLUSTER, ssh_lab.client_key)
    (laptop / "data").mkdir(exist_ok=True)
    (laptop / "data" / "weights.txt").write_text("w=1\n")
    path = write_config(laptop / "cluster.yaml", onprem_config(CLUSTER, head, workers, key, min_workers=2,
                                                               file_mounts={"~/data": "./data"}))
    home = laptop / "home"
    yield {"path": path, "home": home, "laptop": laptop, "twins": [head, *workers], "shared": home_dir}
    cli("down", str(path), "--yes", home=home, timeout=180)
    for t in (head, *workers):
        twin_net.remove(t.name)


def test_hosts_sharing_a_home_each_run_their_own_node(nfs):
    path, home, twins = nfs["path"], nfs["home"], nfs["twins"]
    assert all(t.root == nfs["shared"] for t in twins)
    r = cli("up", str(path), "--yes", home=home, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr

    wait_for(lambda: [n["runtime"] for n in cluster_status(path, home)["nodes"]] == ["alive"] * 3, timeout=180,
             what="both workers registered with the head")
    assert job_result(path, JOB, home) == [[t.name, "w=1"] for t in sorted(twins, key=lambda t: t.name)]

    # each node's own token file, pids and logs under its own name; the runtime installed once, shared
    ids = {json.loads((t.node_dir / "node.json").read_text())["node_id"] for t in twins}
    assert len(ids) == 3 and all((t.node_dir / "pids" / "agent.pid").exists() for t in twins)
    assert all((t.node_dir / "node.json").stat().st_mode & 0o777 == 0o600 for t in twins)
    installs = [p.name for p in (nfs["shared"] / ".launch-runtime" / "install").iterdir()]
    assert len([i for i in installs if i.startswith("node-")]) == 1 and not [i for i in installs if i.startswith(".")]

    r = cli("down", str(path), "--yes", home=home, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    for t in twins:
        wait_for(lambda: t.processes() == [], timeout=20, what=f"nothing left running on {t.name}")
        assert not (t.node_dir / "node.json").exists() and not (t.node_dir / "head.address").exists()
