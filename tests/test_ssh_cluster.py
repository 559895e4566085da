"""On-prem clusters over real sshd hosts: the whole CLI, and the faults SSH really has."""

from __future__ import annotations

import os
import sys
import threading
import time

import pexpect
import pytest

from tests.infra import ROOT, cli, cluster_status, node_dir, ssh_cluster, wait_for, write_config


@pytest.fixture(scope="module")
def onprem(ssh_lab, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("onprem")
    head, w1, w2 = ssh_lab.host(), ssh_lab.host(), ssh_lab.host()
    (tmp / "mount").mkdir()
    (tmp / "mount" / "conf.txt").write_text("mounted\n")
    data = ssh_cluster("onprem", ssh_lab, head, [w1.address, w2.address],
                       file_mounts={"~/mount": "./mount"}, setup_commands=["echo set-up >> ~/setup.log"],
                       initialization_commands=["echo cluster-init >> ~/init.log"],
                       # Ray's start commands, verbatim: they expect $RAY_HEAD_IP on every node
                       worker_start_ray_commands=["echo $RAY_HEAD_IP $LAUNCH_HEAD_IP > ~/head_ip; true"])
    data["available_node_types"]["worker"]["initialization_commands"] = ["echo type-init >> ~/init.log"]
    path = write_config(tmp / "onprem.yaml", data)
    home = tmp / "home"
    yield {"path": path, "home": home, "hosts": [head, w1, w2], "tmp": tmp, "data": data}
    cli("down", str(path), "--yes", home=home)


def test_up_status_exec_and_idempotent_up(onprem):
    path, home = onprem["path"], onprem["home"]
    head, w1, w2 = onprem["hosts"]
    r = cli("up", str(path), "--yes", home=home, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    st = cluster_status(path, home)
    assert {n["id"] for n in st["nodes"]} == {head.address, w1.address, w2.address}
    assert all(n["status"] == "up-to-date" and n["runtime"] == "alive" for n in st["nodes"])
    # each host got the runtime shipped and its own HOME set up
    for h in (head, w1, w2):
        assert (h.home / "setup.log").read_text() == "set-up\n"
        assert (h.home / "mount" / "conf.txt").read_text() == "mounted\n"
        assert list((h.home / ".launch-runtime" / "install").iterdir())
        assert ((node_dir(h.home) / "node.json").stat().st_mode & 0o777) == 0o600
    for w in (w1, w2):  # the type's initialization commands first, then the cluster's
        assert (w.home / "init.log").read_text() == "type-init\ncluster-init\n"
        assert (w.home / "head_ip").read_text() == f"{head.ip} {head.ip}\n"
    bootstrap = head.home / "ray_bootstrap_config.yaml"  # where Ray's head start commands look for it
    assert bootstrap.stat().st_mode & 0o777 == 0o600 and "cluster_name: onprem" in bootstrap.read_text()
    # the laptop pinned the head; the head pinned the workers it set up, and the laptop learnt them
    known_hosts = (home / "clusters" / "onprem" / "known_hosts").read_text()
    on_head = (head.home / ".launch-runtime" / "cluster" / "known_hosts").read_text()
    assert all(f"[{h.ip}]:{h.port}" in known_hosts for h in (head, w1, w2))
    assert all(f"[{h.ip}]:{h.port}" in on_head for h in (w1, w2))

    r = cli("exec", str(path), "echo $HOME; exit 4", home=home)
    assert r.returncode == 4 and r.stdout.strip() == str(head.home)
    r = cli("exec", str(path), "cat ~/mount/conf.txt", "--node", w2.address, home=home)
    assert r.returncode == 0 and r.stdout == "mounted\n"

    r = cli("up", str(path), "--yes", home=home, timeout=120)
    assert r.returncode == 0 and "nothing changed" in r.stdout, r.stdout + r.stderr
    assert (w1.home / "setup.log").read_text() == "set-up\n"

    assert cli("get-head-ip", str(path), home=home).stdout.strip() == head.ip
    assert sorted(cli("get-worker-ips", str(path), home=home).stdout.split()) == sorted([w1.ip, w2.ip])


def test_rsync_both_ways(onprem):
    path, home, tmp = onprem["path"], onprem["home"], onprem["tmp"]
    src = tmp / "project"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "a.py").write_text("A = 1\n")
    (src / "run.sh").write_text("echo run\n")
    os.chmod(src / "run.sh", 0o755)
    r = cli("rsync-up", str(path), str(src), "~/project", home=home)
    assert r.returncode == 0 and "2 file(s) sent" in r.stdout, r.stderr
    r = cli("rsync-up", str(path), str(src), "~/project", home=home)  # unchanged: nothing sent
    assert "0 file(s) sent" in r.stdout
    head = onprem["hosts"][0]
    assert (head.home / "project" / "pkg" / "a.py").read_text() == "A = 1\n"
    assert os.access(head.home / "project" / "run.sh", os.X_OK)

    cli("exec", str(path), "mkdir -p ~/results && echo 0.93 > ~/results/acc.txt", home=home)
    back = tmp / "back"
    r = cli("rsync-down", str(path), "~/results", str(back), home=home)
    assert r.returncode == 0, r.stderr
    assert (back / "acc.txt").read_text() == "0.93\n"
    r = cli("rsync-down", str(path), "~/nope", str(back), home=home)
    assert r.returncode == 1 and "no such file" in r.stderr

    r = cli("rsync-up", str(path), str(src / "pkg"), "~/everywhere", "--all-nodes", home=home)
    assert r.returncode == 0, r.stderr
    assert all((h.home / "everywhere" / "a.py").read_text() == "A = 1\n" for h in onprem["hosts"])


def test_attach_drives_a_real_pty(onprem):
    env = {**os.environ, "LAUNCH_HOME": str(onprem["home"]), "TERM": "dumb"}
    child = pexpect.spawn(sys.executable, ["-m", "launcher", "attach", str(onprem["path"])],
                          cwd=str(ROOT), env=env, timeout=30, encoding="utf-8")
    child.sendline("echo answer-$((6*7)) tty=$(tty | cut -c1-8)")
    child.expect("answer-42 tty=/dev/pts")
    child.sendline("exit 3")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 3


def test_submit_and_monitor_over_ssh(onprem):
    path, home, tmp = onprem["path"], onprem["home"], onprem["tmp"]
    script = tmp / "job.py"
    script.write_text("import os\nprint('job ran on', os.environ['LAUNCH_NODE_ID'])\n")
    r = cli("submit", str(path), str(script), home=home)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "job ran on 127." in r.stdout
    r = cli("monitor", str(path), "--no-follow", "--lines", "200", home=home)
    assert r.returncode == 0 and "registered from" in r.stdout


def test_tmux_exec_and_setup_log(onprem):
    path, home = onprem["path"], onprem["home"]
    r = cli("exec", str(path), "sleep 0.2; echo in-tmux > ~/tmux.txt", "--tmux", home=home)
    if r.returncode == 127:
        pytest.skip("tmux is not installed on the test host")
    assert r.returncode == 0, r.stdout + r.stderr
    head = onprem["hosts"][0]
    deadline = time.time() + 10
    while not (head.home / "tmux.txt").exists():
        assert time.time() < deadline
        time.sleep(0.1)
    cli("exec", str(path), "tmux kill-server", home=home)
    r = cli("exec", str(path), "echo in-screen > ~/screen.txt", "--screen", home=home)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: (head.home / "screen.txt").exists(), timeout=10, what="the screen session's command")
    cli("exec", str(path), "screen -ls | grep -o 'launch-[0-9]*' | xargs -r -I{} screen -S {} -X quit", home=home)
    log = cli("status", str(path), "--node", head.address, "--log", home=home)
    assert log.returncode == 0 and "$ echo set-up >> ~/setup.log" in log.stdout


def test_changed_host_key_is_refused(onprem):
    path, home = onprem["path"], onprem["home"]
    w2 = onprem["hosts"][2]
    w2.stop()
    w2.new_host_key()  # the host was "rebuilt", or someone is in the middle
    w2.start()
    r = cli("exec", str(path), "true", "--node", w2.address, home=home)
    assert r.returncode == 1
    assert f"host key of [{w2.ip}]:{w2.port} changed" in r.stderr and "Traceback" not in r.stderr


def test_down_stops_every_runtime(onprem):
    # runs last in this module
    path, home = onprem["path"], onprem["home"]
    head, w1, _w2 = onprem["hosts"]
    assert head.runtime_processes() and w1.runtime_processes()
    r = cli("down", str(path), "--yes", home=home, timeout=120)
    assert r.returncode == 0, r.stderr
    deadline = time.time() + 10
    while head.runtime_processes() or w1.runtime_processes():
        assert time.time() < deadline, "runtime processes left after down"
        time.sleep(0.1)
    assert cluster_status(path, home)["nodes"] == []


# --- faults --------------------------------------------------------------------------------------------


def test_late_sshd_dropped_connection_hung_host_and_failing_setup(ssh_lab, tmp_path):
    """One `up` meets four faults at once; the healthy nodes still come up."""
    head = ssh_lab.host()
    late = ssh_lab.host(start=False)         # its sshd comes up 2 s after `up` starts
    dropper = ssh_lab.host()                 # the connection drops in the middle of setup
    failing = ssh_lab.host()                 # a setup command fails
    hung = ssh_lab.blackhole()               # accepts TCP, never speaks SSH
    workers = [late.address, dropper.address, failing.address, hung]
    data = ssh_cluster("faults", ssh_lab, head, workers)
    data["provider"].update({"ssh_wait_s": 6, "ssh_connect_timeout_s": 1})
    data["autoscaler"] = {"enabled": False}  # `up`'s own handling is under test: no replacing of failed nodes
    data["worker_setup_commands"] = [
        # first run on the dropper host: kill our own sshd session process mid-command
        'if [ "$HOME" = "%s" ] && [ ! -f ~/dropped ]; then touch ~/dropped; kill -9 $PPID; sleep 5; fi' % dropper.home,
        'if [ "$HOME" = "%s" ]; then echo "disk full" >&2; exit 12; fi' % failing.home,
        "echo worker-ready > ~/ready",
    ]
    path = write_config(tmp_path / "faults.yaml", data)
    home = tmp_path / "home"
    threading.Timer(2.0, late.start).start()
    try:
        r = cli("up", str(path), "--yes", home=home, timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr  # only workers failed: the cluster is up
        st = {n["id"]: n for n in cluster_status(path, home)["nodes"]}
        assert st[head.address]["runtime"] == "alive"
        assert st[late.address]["status"] == "up-to-date"                  # up waited for it
        assert st[dropper.address]["status"] == "up-to-date"               # the step was retried
        assert (dropper.home / "ready").exists()
        assert "connection lost" in cli("status", str(path), "--node", dropper.address, "--log", home=home).stdout
        assert st[failing.address]["status"] == "update-failed"
        assert st[hung]["status"] == "update-failed"
        errors = r.stderr
        assert f"node {failing.address} failed at setting-up" in errors and "disk full" in errors
        assert f"node {hung} failed at waiting-for-ssh" in errors and "did not answer within 6s" in errors
        assert "Traceback" not in errors
    finally:
        cli("down", str(path), "--yes", home=home, timeout=120)


def test_proxy_command(ssh_lab, tmp_path):
    head = ssh_lab.host()
    relay = f"{sys.executable} {ROOT / 'tests' / 'tcp_relay.py'} %h %p"
    data = ssh_cluster("proxied", ssh_lab, head, [])
    data["auth"]["ssh_proxy_command"] = relay
    data["available_node_types"]["worker"]["min_workers"] = 0
    path = write_config(tmp_path / "p.yaml", data)
    home = tmp_path / "home"
    try:
        r = cli("up", str(path), "--yes", home=home, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        r = cli("exec", str(path), "echo via-proxy", home=home)
        assert r.stdout == "via-proxy\n"
    finally:
        cli("down", str(path), "--yes", home=home)
