"""Node-side control of the runtime: `python -m runtime.node start|stop|status`.

`start` launches the head service (head node only) and the agent as daemons in their own sessions,
logging to ~/.launch-runtime/logs, and returns once they run: on the head, once the service listens
(it prints `head-address: HOST:PORT`). It is idempotent: running daemons are left alone unless
`--restart`. Everything it needs, the token included, comes from ~/.launch-runtime/node.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from core.paths import HEAD_ADDRESS, MONITOR_SETTINGS, on_this_node
from runtime.node_config import NodeRuntimeConfig, runtime_dir

DAEMONS = {"head": "runtime.head", "agent": "runtime.agent", "monitor": "autoscaler.monitor"}


def _pid_file(name: str) -> Path:
    return runtime_dir() / "pids" / f"{name}.pid"


def daemon_pid(name: str) -> int | None:
    """The pid of a running daemon, checked against its command line so a reused pid is not taken."""
    try:
        pid = int(_pid_file(name).read_text())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return None
    except (OSError, ValueError):
        return None
    return pid if DAEMONS[name].encode() in cmdline else None


def _spawn(name: str) -> subprocess.Popen:
    logs = runtime_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    _pid_file(name).parent.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", DAEMONS[name]],
            cwd=Path.home(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _pid_file(name).write_text(str(proc.pid))
    return proc


def _stop(name: str, grace_s: float = 5.0) -> None:
    pid = daemon_pid(name)
    if pid is None:
        _pid_file(name).unlink(missing_ok=True)
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while daemon_pid(name) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    if daemon_pid(name) is not None:
        os.kill(pid, signal.SIGKILL)
    _pid_file(name).unlink(missing_ok=True)


def _tail(name: str, n: int = 10) -> str:
    try:
        return "\n".join((runtime_dir() / "logs" / f"{name}.log").read_text().splitlines()[-n:])
    except OSError:
        return ""


def start(restart: bool, wait_s: float = 30.0) -> int:
    cfg = NodeRuntimeConfig.load()
    names = ["head", "agent"] if cfg.is_head else ["agent"]
    if restart:
        for name in reversed(names):
            _stop(name)
    if cfg.is_head:
        addr_file = on_this_node(HEAD_ADDRESS)
        if daemon_pid("head") is None:
            addr_file.unlink(missing_ok=True)
            proc = _spawn("head")
            deadline = time.monotonic() + wait_s
            while not addr_file.exists():
                # poll() on our own child: right after fork its cmdline is still ours, so
                # daemon_pid() would not recognise it yet.
                if proc.poll() is not None or time.monotonic() > deadline:
                    print(f"the head service (pid {proc.pid}) did not start:\n{_tail('head')}", file=sys.stderr)
                    return 1
                time.sleep(0.05)
        print(f"head-address: {addr_file.read_text().strip()}")
    if daemon_pid("agent") is None:
        _spawn("agent")
    return 0


def stop() -> int:
    for name in ("monitor", "agent", "head"):
        _stop(name)
    return 0


def start_monitor() -> int:
    """(Re)start the autoscaler monitor on the head: it reads its config when it starts."""
    if not on_this_node(MONITOR_SETTINGS).exists():
        print(f"no {MONITOR_SETTINGS}: the autoscaler is not configured on this node", file=sys.stderr)
        return 1
    _stop("monitor")
    _spawn("monitor")
    return 0


def status() -> int:
    print(json.dumps({name: daemon_pid(name) for name in DAEMONS}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.node")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_start = sub.add_parser("start", help="start the runtime daemons of this node")
    p_start.add_argument("--restart", action="store_true", help="stop running daemons first")
    sub.add_parser("stop", help="stop the runtime daemons of this node")
    sub.add_parser("status", help="print the pids of the running daemons as JSON")
    sub.add_parser("start-monitor", help="(re)start the autoscaler monitor (head only)")
    sub.add_parser("stop-monitor", help="stop the autoscaler monitor, e.g. while `launch up` works")
    args = parser.parse_args(argv)
    if args.cmd == "start":
        return start(args.restart)
    if args.cmd == "stop":
        return stop()
    if args.cmd == "start-monitor":
        return start_monitor()
    if args.cmd == "stop-monitor":
        _stop("monitor")
        return 0
    return status()


if __name__ == "__main__":
    sys.exit(main())
