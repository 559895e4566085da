"""Node-side control of the runtime: `python -m runtime.node start|stop|status|start-monitor|stop-monitor`.

`start` launches the head service (head node only) and the agent as daemons in their own sessions,
logging to the node's own ~/.launch-runtime/nodes/<hostname>/logs, and returns once they run: on the head, once the service listens
(it prints `head-address: HOST:PORT`). It is idempotent: running daemons are left alone unless
`--restart`. Everything it needs, the token included, comes from node.json there.

A supervisor daemon keeps every daemon that is wanted running: one that dies (the autoscaler, the
agent, the head service) is started again within a second or two. Which daemons are wanted is kept
on disk (pids/NAME.wanted), so `stop-monitor` (`launch down`) is not undone by it.
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

from core.entry_points import CONTROL_LOOP, HEAD_SERVICE, NODE_AGENT, NODE_CONTROL
from core.files import atomic_write, file_lock, open_private, private_dir
from core.paths import HEAD_ADDRESS, HEAD_SPEC, HOLDER_FIFO, MONITOR_DOWN, NODE_CONFIG, RUNTIME_DIR, on_this_node
from runtime.node_config import NodeRuntimeConfig, runtime_dir

DAEMONS = {"head": HEAD_SERVICE, "agent": NODE_AGENT, "monitor": CONTROL_LOOP,
           "supervisor": f"{NODE_CONTROL} supervise"}
SUPERVISED = ("head", "agent", "monitor")
SUPERVISE_EVERY_S = 0.5
# A daemon that says it is alive (beat) but has not for this long is hung (its process up, its work
# stopped: a head whose serving thread died): the supervisor kills it, and starts it again.
LIVENESS_S = 30.0
HEAD_LIVENESS = "head"
RESTART_BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 10.0  # a daemon that dies later than this after its start is restarted without backoff


def _pid_file(name: str) -> Path:
    return runtime_dir() / "pids" / f"{name}.pid"


def _wanted_file(name: str) -> Path:
    return runtime_dir() / "pids" / f"{name}.wanted"


def _liveness_file(name: str) -> Path:
    return runtime_dir() / "pids" / f"{name}.alive"


def beat(name: str) -> None:
    """(a daemon's clock) It is alive: the file's time is all that changes (nothing to write: a full
    disk does not stop it)."""
    path = _liveness_file(name)
    try:
        os.utime(path)
    except FileNotFoundError:
        try:
            path.touch()
        except OSError:
            pass
    except OSError:
        pass


def hung(name: str) -> bool:
    """A daemon that beats and has not for LIVENESS_S."""
    try:
        return time.time() - _liveness_file(name).stat().st_mtime > LIVENESS_S
    except OSError:
        return False


def _spawn_lock():
    """Held by whoever starts or stops daemons (start, stop, the supervisor): one at a time."""
    path = runtime_dir() / "pids" / "spawn.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return file_lock(path)


def daemon_pid(name: str) -> int | None:
    """The pid of a running daemon, checked against its command line so a reused pid is not taken."""
    try:
        pid = int(_pid_file(name).read_text())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = b" ".join(f.read().split(b"\0"))
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return None
    except (OSError, ValueError):
        return None
    if not cmdline.strip():  # just spawned: its exec is under way and its arguments not yet in /proc
        return pid
    return pid if DAEMONS[name].encode() in cmdline else None


def _spawn(name: str) -> subprocess.Popen:
    for d in (on_this_node(RUNTIME_DIR), runtime_dir()):  # its user's only: logs, pids, jobs, tokens
        private_dir(d)
    logs = private_dir(runtime_dir() / "logs")
    _pid_file(name).parent.mkdir(parents=True, exist_ok=True)
    _liveness_file(name).unlink(missing_ok=True)  # an earlier one's last beat is not this one's
    with open_private(logs / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", *DAEMONS[name].split()],
            cwd=Path.home(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _record_pid(name, proc.pid)
    except OSError:
        proc.kill()  # untracked, it would run beside the next one started: two agents of one node
        proc.wait()
        raise
    return proc


def _record_pid(name: str, pid: int) -> None:
    """Written in place at a fixed width: on a full disk the file's own block takes the new pid (a daemon
    is restarted while the disk is full), and a write that fails leaves the old record whole, never an
    empty file (a daemon nobody could find)."""
    fd = os.open(_pid_file(name), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, f"{pid:>10}\n".encode(), 0)
        os.ftruncate(fd, 11)
    finally:
        os.close(fd)


_held: list = []  # the lock a daemon holds while it lives (see single_instance)


def single_instance(name: str, wait_s: float = 10.0) -> None:
    """(a daemon starting) Be the only `name` of this node: a second agent (or head, or autoscaler) would
    run its node's work twice. Waits for one that is still stopping; exits if another keeps running."""
    import fcntl

    try:
        lock = open(runtime_dir() / "pids" / f"{name}.lock", "a+")
    except OSError as e:  # no room for even an empty file: run unguarded rather than not at all
        print(f"{name}: no single-instance lock ({e.strerror}); starting anyway", file=sys.stderr, flush=True)
        return
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _held.append(lock)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                print(f"{name}: another {name} of this node is running; this one exits", file=sys.stderr, flush=True)
                sys.exit(0)
            time.sleep(0.1)


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


def _want(name: str, wanted: bool) -> None:
    path = _wanted_file(name)
    if wanted:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    else:
        path.unlink(missing_ok=True)


def _tail(name: str, n: int = 10) -> str:
    try:
        return "\n".join((runtime_dir() / "logs" / f"{name}.log").read_text().splitlines()[-n:])
    except OSError:
        return ""


def _ensure_supervisor() -> None:
    if daemon_pid("supervisor") is None:
        _spawn("supervisor")




def _want_running(names: list[str], restart: bool) -> None:
    """(under the spawn lock) These daemons are wanted; with restart, the running ones are stopped first."""
    for name in names:
        _want(name, True)
    if restart:
        for name in reversed(names):
            _stop(name)


def _holder_fifo() -> Path | None:
    path = on_this_node(HOLDER_FIFO)
    return path if path.exists() else None


def _start_held(fifo: Path, names: list[str], is_head: bool, restart: bool, wait_s: float) -> int:
    """A node held by a scheduler's job (a Slurm allocation): its daemons must be children of that job's
    own process, or they would end with the command that started them. The holder job runs the
    supervisor once told which interpreter to use; the supervisor starts what is wanted."""
    with _spawn_lock():
        _want_running(names, restart)
        if is_head and daemon_pid("head") is None:
            on_this_node(HEAD_ADDRESS).unlink(missing_ok=True)
    if daemon_pid("supervisor") is None:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: nobody reads it: the holder job is gone or ran its supervisor already
            print(f"the job holding this node does not wait at {fifo} (it ended?)", file=sys.stderr)
            return 1
        with os.fdopen(fd, "w") as f:
            f.write(sys.executable + "\n")
    deadline = time.monotonic() + wait_s
    while not all(daemon_pid(n) is not None for n in names) or (is_head and not on_this_node(HEAD_ADDRESS).exists()):
        if time.monotonic() > deadline:
            tails = "\n".join(_tail(n) for n in ["supervisor", *names])
            print(f"the node's daemons did not start in {wait_s:.0f}s:\n{tails}", file=sys.stderr)
            return 1
        time.sleep(0.05)
    if is_head:
        print(f"head-address: {on_this_node(HEAD_ADDRESS).read_text().strip()}")
    return 0


def start(restart: bool, wait_s: float = 30.0) -> int:
    cfg = NodeRuntimeConfig.load()
    names = ["head", "agent"] if cfg.is_head else ["agent"]
    fifo = _holder_fifo()
    if fifo is not None:
        return _start_held(fifo, names, cfg.is_head, restart, wait_s)
    with _spawn_lock():
        _want_running(names, restart)
        if cfg.is_head:
            addr_file = on_this_node(HEAD_ADDRESS)
            if daemon_pid("head") is None:
                addr_file.unlink(missing_ok=True)
                proc = _spawn("head")
                deadline = time.monotonic() + wait_s
                while not addr_file.exists():
                    if proc.poll() is not None or time.monotonic() > deadline:
                        print(f"the head service (pid {proc.pid}) did not start:\n{_tail('head')}", file=sys.stderr)
                        return 1
                    time.sleep(0.05)
            print(f"head-address: {addr_file.read_text().strip()}")
        if daemon_pid("agent") is None:
            _spawn("agent")
        _ensure_supervisor()
    return 0


def stop() -> int:
    """Stop every daemon, and forget the cluster: a host given back (on-prem `down`, a released worker)
    keeps no token of it, nor an address a driver on the host would wait for."""
    with _spawn_lock():
        _stop("supervisor")
        for name in SUPERVISED:
            _want(name, False)
            _stop(name)
        for path in (NODE_CONFIG, HEAD_ADDRESS):
            on_this_node(path).unlink(missing_ok=True)
        from runtime.blobs import forget_memory  # (the head's values in memory: its store's blobs stay)
        from runtime.head_state import default_state_dir
        from runtime.store import blobs_dir

        forget_memory(blobs_dir(default_state_dir()))
    return 0


def start_monitor() -> int:
    """Start the autoscaler on the head, or have the running one read the spec `up` just shipped (SIGHUP)."""
    spec = on_this_node(HEAD_SPEC)
    if not spec.exists():
        print(f"no {spec}: the autoscaler is not configured on this node", file=sys.stderr)
        return 1
    with _spawn_lock():
        _want("monitor", True)
        pid = daemon_pid("monitor")
        if pid is not None:
            os.kill(pid, signal.SIGHUP)
            return 0
        if _holder_fifo() is None:
            _spawn("monitor")
            _ensure_supervisor()
    if _holder_fifo() is not None:  # the holder job's supervisor starts it, inside the allocation
        deadline = time.monotonic() + 30
        while daemon_pid("monitor") is None:
            if time.monotonic() > deadline or daemon_pid("supervisor") is None:
                print(f"the autoscaler did not start:\n{_tail('monitor')}", file=sys.stderr)
                return 1
            time.sleep(0.05)
    return 0


DOWN_RESULT = "monitor-down: "  # the last line of `stop-monitor --down`: what the monitor did, as JSON
DOWN_WAIT_S = 900.0  # removing every worker of a large cloud cluster takes minutes


def stop_monitor(down: bool = False, keep_stopped: bool = False) -> int:
    """Stop the autoscaler. With `down`, it first removes every worker (terminates them, or stops them
    with `keep_stopped`) and says how many, on a last line DOWN_RESULT + json."""
    request = on_this_node(MONITOR_DOWN)
    with _spawn_lock():
        _want("monitor", False)
        pid = daemon_pid("monitor")
        if not down or pid is None:
            _stop("monitor")
            if down:
                print(DOWN_RESULT + json.dumps({"error": "the autoscaler is not running on the head"}))
            return 1 if down else 0
        atomic_write(request, json.dumps({"keep_stopped": keep_stopped}))
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + DOWN_WAIT_S  # waited for outside the lock: the supervisor goes on meanwhile
    while daemon_pid("monitor") is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    if daemon_pid("monitor") is not None:
        with _spawn_lock():
            _stop("monitor")
    try:
        result = json.loads(request.read_text())
    except (OSError, ValueError):
        result = {}
    request.unlink(missing_ok=True)
    if "removed" not in result and "error" not in result:
        result = {"error": f"the autoscaler stopped without removing the workers:\n{_tail('monitor')}"}
    print(DOWN_RESULT + json.dumps(result))
    return 0 if "removed" in result else 1


def supervise() -> int:
    """Start again every wanted daemon that is not running. One that dies soon after it started (a crash
    loop) is retried less and less often, up to every 30 s; one that ran a while and then died (killed,
    out of memory) is started again at once. Every restart is logged. Nothing stops the supervisor but
    SIGTERM: not a full disk (its log, a pid file), nor any other error of one round."""
    stop_now = []
    signal.signal(signal.SIGTERM, lambda *_: stop_now.append(True))
    _pid_file("supervisor").parent.mkdir(parents=True, exist_ok=True)
    _pid_file("supervisor").write_text(str(os.getpid()))  # started by a holder job, not by _spawn
    delay = {name: SUPERVISE_EVERY_S for name in SUPERVISED}
    next_try = {name: 0.0 for name in SUPERVISED}
    started = {name: 0.0 for name in SUPERVISED}
    while not stop_now:
        now = time.monotonic()
        try:
            with _spawn_lock():
                for name in SUPERVISED:
                    if not stop_now:
                        _supervise_one(name, now, delay, next_try, started)
        except Exception as e:  # noqa: BLE001 - tried again next round
            _say(f"supervising failed this round ({type(e).__name__}: {e})")
        time.sleep(SUPERVISE_EVERY_S)
    return 0


def _supervise_one(name: str, now: float, delay: dict, next_try: dict, started: dict) -> None:
    pid = daemon_pid(name)
    if pid is not None and hung(name):
        _say(f"{name} (pid {pid}) has not said it is alive for {LIVENESS_S:.0f}s: killing it")
        _kill_hung(name, pid)
        pid = None
    if not _wanted_file(name).exists() or pid is not None:
        return
    if now - started[name] > HEALTHY_AFTER_S:  # it had been up a while: not a crash loop
        delay[name], next_try[name] = SUPERVISE_EVERY_S, 0.0
    if now < next_try[name]:
        return
    _say(f"{name} is not running: starting it again")
    started[name] = now
    next_try[name] = now + delay[name]
    delay[name] = min(RESTART_BACKOFF_MAX_S, delay[name] * 2)
    try:
        _spawn(name)
    except OSError as e:  # a full disk: tried again, with the backoff, once there may be room
        _say(f"could not start {name}: {e}")


def _say(message: str) -> None:
    """A line of the supervisor's log; lost, not fatal, when the disk is full."""
    try:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}", flush=True)
    except OSError:
        pass


def _kill_hung(name: str, pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _liveness_file(name).unlink(missing_ok=True)  # the next one starts without a stale beat
    deadline = time.monotonic() + 5
    while daemon_pid(name) is not None and time.monotonic() < deadline:
        time.sleep(0.05)


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
    p_stop = sub.add_parser("stop-monitor", help="stop the autoscaler monitor")
    p_stop.add_argument("--down", action="store_true", help="first have it remove every worker (`launch down`)")
    p_stop.add_argument("--keep-stopped", action="store_true", help="with --down: stop them instead")
    sub.add_parser("supervise", help="(the supervisor daemon) keep the wanted daemons running")
    args = parser.parse_args(argv)
    commands = {"start": lambda: start(args.restart), "stop": stop, "start-monitor": start_monitor,
                "stop-monitor": lambda: stop_monitor(args.down, args.keep_stopped), "supervise": supervise, "status": status}
    return commands[args.cmd]()


if __name__ == "__main__":
    sys.exit(main())
