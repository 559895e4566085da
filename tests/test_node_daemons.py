"""A node's daemons (runtime/node.py) are never two of a kind: a daemon whose pid cannot be recorded (a full
disk) is not left running untracked, and a second agent, head or autoscaler of a node exits (real
processes, a real tmpfs)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.infra import ROOT, fill_disk, wait_for

HOLD = ("from runtime.node import single_instance; single_instance({name!r}, wait_s={wait}); "
        "print('running', flush=True); import time; time.sleep(60)")


def _env(home) -> dict:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("LAUNCH_")}, "HOME": str(home),
            "PYTHONPATH": str(ROOT)}


def _holder(home, name: str, wait: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLD.format(name=name, wait=wait)], env=_env(home),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_second_daemon_of_a_kind_on_a_node_exits_and_one_stopping_is_waited_for(tmp_path):
    from runtime.node_config import runtime_dir

    (tmp_path / runtime_dir().relative_to(os.path.expanduser("~")) / "pids").mkdir(parents=True)
    first = _holder(tmp_path, "agent", 0.5)
    try:
        assert first.stdout.readline().strip() == "running"
        second = _holder(tmp_path, "agent", 0.5)
        out, err = second.communicate(timeout=30)
        assert second.returncode == 0 and out == ""
        assert "another agent of this node is running; this one exits" in err
        other_kind = _holder(tmp_path, "monitor", 0.5)  # one of each kind
        assert other_kind.stdout.readline().strip() == "running"
        other_kind.kill()
        waiting = _holder(tmp_path, "agent", 30)  # the first is stopping: the next one waits for it
        first.kill()
        assert waiting.stdout.readline().strip() == "running"
        waiting.kill()
    finally:
        first.kill()


def _spawned(home) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = open(f"/proc/{pid}/environ", "rb").read()
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        if f"HOME={home}\0".encode() in env and b"-m\0http.server" in cmd:
            found.append(int(pid))
    return found


def test_a_daemon_whose_pid_cannot_be_written_is_not_left_running(tmpfs, monkeypatch):
    """On a full disk a daemon is started again where its pid file is (written in place); where no pid
    file can be written, the daemon started is killed rather than left running untracked."""
    import runtime.node as node

    home = tmpfs("size=1m")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setitem(node.DAEMONS, "agent", "http.server 0")  # stand-ins that run until killed
    monkeypatch.setitem(node.DAEMONS, "monitor", "http.server 0")
    node._spawn("agent").kill()  # room: it runs, and its pid is recorded
    node._pid_file("monitor").parent.mkdir(parents=True, exist_ok=True)
    wait_for(lambda: _spawned(home) == [], timeout=10, what="the first stand-in gone")
    fill_disk(home)
    again = node._spawn("agent")  # its pid file is there: restarted, recorded in place
    assert int(node._pid_file("agent").read_text()) == again.pid
    # seen once it has exec'd (until then its command line is still its parent's)
    wait_for(lambda: _spawned(home) == [again.pid], timeout=10, what="the restarted stand-in running")
    again.kill()
    again.wait()
    with pytest.raises(OSError):
        node._spawn("monitor")  # no pid file, and no room for one
    assert _spawned(home) == []  # not left running where no supervisor can find it


SUPERVISOR = ("import runtime.node as n; n.DAEMONS['agent'] = 'http.server 0'; n.SUPERVISED = ('agent',); "
              "n._want('agent', True); n.supervise()")


def test_the_supervisor_lives_through_a_full_disk_and_restarts_what_dies_meanwhile(tmpfs):
    import signal

    home = tmpfs("size=1m")
    log = home / "supervisor.log"
    supervisor = subprocess.Popen([sys.executable, "-c", SUPERVISOR], env=_env(home), cwd=home,
                                  stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    try:
        (first,) = wait_for(lambda: _spawned(home), timeout=30, what="the supervised stand-in running")
        with open(log, "ab") as f:  # its log ends at a page's end: on a full disk, no next line fits
            f.write(b"#" * (-log.stat().st_size % 4096))
        fill_disk(home)  # its own log cannot grow
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: [p for p in _spawned(home) if p != first], timeout=30,
                 what="the stand-in started again while the disk is full")
        assert supervisor.poll() is None  # alive
    finally:
        supervisor.kill()
        supervisor.wait()
        for pid in _spawned(home):
            os.kill(pid, signal.SIGKILL)
