"""Nodes that are not copies of the laptop: image twins booting Debian 11 (Python 3.9, with Debian's
python3-protobuf and python3-cryptography installed system-wide) and Debian 13 (Python 3.13). The laptop
runs this suite's Python (3.11): the runtime is made for each node's own interpreter, kept ahead of the
image's packages, and the user's environment stays the user's."""

from __future__ import annotations

import os
import sys

import pytest

import runtime
from tests.infra import cli, cluster_status, job_result, wait_for, write_config
from tests.infra.twins import onprem_config

# A job, run on the cluster's own Python: a gang of three 2-CPU bundles, one per host (STRICT_SPREAD), on
# hosts of 2 CPUs: the head's autoscaler adds both workers, and a task runs in each bundle.
JOB = '''
import json, socket, sys
import runtime
from runtime.placement_group import PlacementGroupSchedulingStrategy, placement_group, remove_placement_group

runtime.init()
pg = placement_group([{"CPU": 2}] * 3, strategy="STRICT_SPREAD")
runtime.get(pg.ready(), timeout=300)


@runtime.remote(num_cpus=2)
def where():
    import cryptography, google.protobuf, usermod
    return {"host": socket.gethostname(), "python": "%d.%d" % sys.version_info[:2],
            "protobuf": google.protobuf.__version__, "protobuf_from": google.protobuf.__file__,
            "cryptography": cryptography.__version__, "usermod": usermod.WHO}


refs = [where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, i)).remote() for i in range(3)]
print("RESULT " + json.dumps(runtime.get(refs, timeout=300)))
remove_placement_group(pg)
'''

# what a user's setup step installs for the user (as `pip install --user` would): importable by the work
USER_MODULE = ("mkdir -p \"$(python3 -m site --user-site)\" && "
               "echo 'WHO = \"installed by setup_commands\"' > \"$(python3 -m site --user-site)/usermod.py\"")
QUICK = {"setup_commands": [USER_MODULE], "runtime": {"heartbeat_interval_s": 0.3, "node_timeout_s": 5}}


@pytest.fixture(scope="module")
def debian11(twin_net, ssh_lab, node_images):
    image = node_images["bullseye"]
    head = twin_net.twin("d11-head", twin_net.ip(41), image=image)
    workers = [twin_net.twin(f"d11-w{i}", twin_net.ip(41 + i), image=image) for i in (1, 2)]
    head.block_laptop()
    laptop, key = twin_net.laptop_for("d11", ssh_lab.client_key)
    path = write_config(laptop / "cluster.yaml", onprem_config("d11", head, workers, key, **QUICK))
    home = laptop / "home"
    yield {"path": path, "home": home, "laptop": laptop, "head": head, "workers": workers}
    cli("down", str(path), "--yes", home=home, timeout=180)
    for t in (head, *workers):
        twin_net.remove(t.name)


def test_a_debian11_pool_with_pythons_own_packages_autoscales_work_and_jobs(debian11):
    path, home, head, workers = debian11["path"], debian11["home"], debian11["head"], debian11["workers"]
    r = cli("up", str(path), "--yes", home=home, timeout=420)
    assert r.returncode == 0, r.stdout + r.stderr
    log = (home / "clusters" / "d11" / "logs").glob("*.log")
    assert any("the node runs Python 3.9 (cpython, x86_64)" in p.read_text() for p in log)

    # a job on the cluster's Python: the autoscaler brings both workers for the work it submits
    results = job_result(path, JOB, home, timeout=420)
    assert sorted(x["host"] for x in results) == ["d11-head", "d11-w1", "d11-w2"]
    for x in results:
        assert x["python"] == "3.9"
        # the runtime's own protobuf, ahead of Debian's 3.12 in /usr/lib/python3/dist-packages
        assert not x["protobuf"].startswith("3.") and "/.launch-runtime/install/node-cp39-" in x["protobuf_from"]
        # the image's own packages and what setup installed are the work's: Debian's cryptography, not
        # the one the head's control plane ships for paramiko
        assert x["cryptography"] == "3.3.2" and x["usermod"] == "installed by setup_commands"

    # a bare `python3` on a node imports the runtime (ahead of the system's protobuf) and finds its cluster
    probe = "python3 -c 'import runtime; print(len(runtime.init().cluster_state().nodes))'"
    worker_ids = [n["id"] for n in cluster_status(path, home)["nodes"] if n["kind"] == "worker"]
    for node in (None, worker_ids[0]):
        r = cli("exec", str(path), probe, *(["--node", node] if node else []), home=home)
        assert r.returncode == 0 and r.stdout.strip() == "3", r.stdout + r.stderr

    # the laptop's Python (this suite's) is not the cluster's: one clear line at init, naming both
    env_home = os.environ.get("LAUNCH_HOME")
    os.environ["LAUNCH_HOME"] = str(home)
    try:
        with pytest.raises(RuntimeError) as e:
            runtime.init(cluster="d11")
    finally:
        runtime.shutdown()
        os.environ.pop("LAUNCH_HOME") if env_home is None else os.environ.__setitem__("LAUNCH_HOME", env_home)
    here = "%d.%d" % sys.version_info[:2]
    assert f"this driver runs Python {here} but the cluster runs Python 3.9" in str(e.value)

    # idle workers go; `down` leaves nothing running on any twin
    wait_for(lambda: len(cluster_status(path, home)["nodes"]) == 1, timeout=120, what="idle workers released")
    r = cli("down", str(path), "--yes", home=home, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    for t in (head, *workers):
        wait_for(lambda: t.processes() == [], timeout=20, what=f"nothing left running on {t.name}")
        # nor a token of the cluster, nor an address a driver there would wait for
        assert not (t.node_dir / "node.json").exists()
        assert not (t.node_dir / "head.address").exists()


def test_a_debian13_node_runs_the_runtime_on_python_313(twin_net, ssh_lab, node_images):
    head = twin_net.twin("d13-head", twin_net.ip(45), image=node_images["trixie"])
    laptop, key = twin_net.laptop_for("d13", ssh_lab.client_key)
    path = write_config(laptop / "cluster.yaml", onprem_config("d13", head, [], key, **QUICK))
    home = laptop / "home"
    try:
        r = cli("up", str(path), "--yes", home=home, timeout=420)
        assert r.returncode == 0, r.stdout + r.stderr
        job = laptop / "where.py"
        job.write_text("import sys, runtime\nruntime.init()\n\n@runtime.remote\ndef f():\n"
                       "    return '%d.%d' % sys.version_info[:2]\n\n"
                       "print('task python', runtime.get(f.remote()), 'job python', '%d.%d' % sys.version_info[:2])\n")
        r = cli("submit", str(path), str(job), home=home, timeout=300)
        assert r.returncode == 0 and "task python 3.13 job python 3.13" in r.stdout, r.stdout + r.stderr
        r = cli("down", str(path), "--yes", home=home, timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        wait_for(lambda: head.processes() == [], timeout=20, what="nothing left running on the node")
    finally:
        cli("down", str(path), "--yes", home=home, timeout=180)
        twin_net.remove(head.name)
