"""Ray's `docker:` section on an on-prem pool of VM twins, each with a Docker daemon of its own that pulls
from a registry on the twins' bridge (tests/infra/containers.py): the node's setup, runtime, exec,
attach and rsync land inside one long-lived container; a changed image replaces it; `down` leaves no
container and no process; a host without docker is named in one line."""

from __future__ import annotations

import json
import sys

import pexpect
import pytest

from tests.infra import ROOT, cli, job_result, wait_for, write_config
from tests.infra.twins import onprem_config

CLUSTER = "boxes"

JOB = '''
import json, os, socket, sys
import runtime

runtime.init()


def where():
    return {"host": socket.gethostname(), "python": "%d.%d" % sys.version_info[:2],
            "in_container": os.path.exists("/.dockerenv"), "setup": open(os.path.expanduser("~/setup.txt")).read().strip()}


task = runtime.remote(num_cpus=1)(where).remote()
print("RESULT " + json.dumps({"job": where(), "task": runtime.get(task, timeout=300)}))
'''


@pytest.fixture(scope="module")
def boxes(twin_net, ssh_lab, container_images):
    head = twin_net.twin("box-head", twin_net.ip(61), docker=True)
    laptop, key = twin_net.laptop_for(CLUSTER, ssh_lab.client_key)
    (laptop / "data").mkdir(exist_ok=True)
    (laptop / "data" / "weights.txt").write_text("w=1\n")
    data = onprem_config(CLUSTER, head, [], key, file_mounts={"~/data": "./data"},
                         docker={"image": container_images["py313"], "container_name": "launch_node",
                                 "pull_before_run": True, "run_options": ["--ulimit nofile=4096:8192"]},
                         initialization_commands=["hostname > ~/init-ran-on-host.txt"],
                         setup_commands=["echo set up in $(cat /etc/debian_version) > ~/setup.txt"])
    path = write_config(laptop / "cluster.yaml", data)
    home = laptop / "home"
    yield {"path": path, "home": home, "laptop": laptop, "head": head, "data": data, "key": key}
    cli("down", str(path), "--yes", home=home, timeout=180)
    twin_net.remove(head.name)


def _container(twin, name="launch_node") -> dict | None:
    r = twin.inside("docker", "inspect", name)
    return json.loads(r.stdout)[0] if r.returncode == 0 else None


def test_a_node_runs_in_its_container(boxes):
    path, home, head = boxes["path"], boxes["home"], boxes["head"]
    r = cli("up", str(path), "--yes", home=home, timeout=420)
    assert r.returncode == 0, r.stdout + r.stderr
    box = _container(head)
    assert box["State"]["Running"] and box["Config"]["Image"].endswith("/py313")
    assert box["HostConfig"]["NetworkMode"] == "host" and box["HostConfig"]["ShmSize"] > 64 * 1024**2
    assert {"Name": "nofile", "Hard": 8192, "Soft": 4096} in box["HostConfig"]["Ulimits"]
    # initialization commands ran on the host, before the container (a registry login would)
    assert (head.root / "init-ran-on-host.txt").read_text().strip() == "box-head"

    # a job and its task run in the container, on the image's Python, beside what setup made there
    seen = job_result(path, JOB, home, timeout=300)
    for x in seen.values():
        assert (x["host"], x["python"], x["in_container"]) == ("box-head", "3.13", True), seen
        assert x["setup"].startswith("set up in 13."), seen  # Debian 13's /etc/debian_version: the image's
    # nothing of the runtime on the host, only the pool's claims (which the laptop keeps there)
    assert [p.name for p in (head.root / ".launch-runtime").iterdir()] == ["pool"]

    # exec, rsync and attach land in the container
    r = cli("exec", str(path), "test -f /.dockerenv && cat ~/data/weights.txt && python3 --version", home=home)
    assert r.returncode == 0 and r.stdout.split() == ["w=1", "Python", r.stdout.split()[2]], r.stdout + r.stderr
    note = boxes["laptop"] / "note.txt"
    note.write_text("hello container\n")
    assert cli("rsync-up", str(path), str(note), "~/note.txt", home=home).returncode == 0
    assert cli("exec", str(path), "cat ~/note.txt", home=home).stdout == "hello container\n"
    back = boxes["laptop"] / "back"
    r = cli("rsync-down", str(path), "~/data", str(back), home=home)
    assert r.returncode == 0 and (back / "weights.txt").read_text() == "w=1\n", r.stdout + r.stderr
    env = {"LAUNCH_HOME": str(home), "COLUMNS": "200"}
    shell = pexpect.spawn(f"{sys.executable} -m launcher attach {path}", cwd=str(ROOT), env=env,
                          encoding="utf-8", timeout=60)
    shell.sendline("test -f /.dockerenv && echo IN-THE-$((6*7))-BOX; exit")
    shell.expect("IN-THE-42-BOX")
    shell.expect(pexpect.EOF)

    # an unchanged config: the container is kept; another image: it is replaced and set up again
    created = box["Created"]
    assert cli("up", str(path), "--yes", home=home, timeout=300).returncode == 0
    assert _container(head)["Created"] == created
    changed = json.loads(json.dumps(boxes["data"]))
    changed["docker"]["image"] = changed["docker"]["image"] + "b"
    write_config(path, changed)
    r = cli("up", str(path), "--yes", home=home, timeout=420)
    assert r.returncode == 0, r.stdout + r.stderr
    box = _container(head)
    assert box["Config"]["Image"].endswith("/py313b") and box["Created"] != created
    assert cli("exec", str(path), "cat ~/setup.txt", home=home).stdout.startswith("set up in 13")

    # down: no container, nothing running on the host but its own daemons
    r = cli("down", str(path), "--yes", home=home, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert head.inside("docker", "ps", "-aq").stdout.strip() == ""
    wait_for(lambda: head.processes() == [], timeout=20, what="nothing left running on the host")


def test_a_host_without_docker_is_named_in_one_line(twin_net, ssh_lab, container_images, node_images):
    # an image of its own, without docker (a daemon that does not answer is said as Docker says it:
    # tests/test_container_plan.py)
    said = "docker is not installed on the node (the config's docker section runs the node in a container)"
    bare = twin_net.twin("box-bare", twin_net.ip(62), image=node_images["bullseye"])
    laptop, key = twin_net.laptop_for("bare", ssh_lab.client_key)
    data = onprem_config("bare", bare, [], key, docker={"image": container_images["py313"], "container_name": "c"})
    path = write_config(laptop / "cluster.yaml", data)
    try:
        r = cli("up", str(path), "--yes", home=laptop / "home", timeout=300)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert line.startswith(f"error: node {bare.ip}:22 failed at starting the container: {said}"), line
    finally:
        cli("down", str(path), "--yes", home=laptop / "home", timeout=120)
        twin_net.remove(bare.name)
