"""Chaos: a local cluster that autoscales while things die under it, and what that costs.

    .venv/bin/python bench/chaos.py [--cycles 100] [--max-seconds 600] [--seed 1]

A local cluster (head with no CPU, 2-CPU workers, 0..3 of them, short idle timeout) whose provider fails
20% of node creations. Tasks (0.1-1.5 s, max_retries=3) are submitted in a steady stream; each cycle
kill -9s one of: the autoscaler, a worker node (its whole process tree: a machine lost), or the head
service, at a random moment, then waits 2-5 s. The node supervisor restarts the head and autoscaler;
the autoscaler replaces lost workers; agents re-register; clients reconnect.

Printed: tasks submitted / completed / failed after their retries / lost (no result at all); tasks
run more often than their retries allow; nodes leaked (a live node process the provider does not list,
or anything left after `down`); duplicate launches (more workers than max_workers at any moment); and
time to recover after each kind of kill (head answering, autoscaler up, the workers the head counts
alive exactly those whose processes live: a lost one declared dead and its work requeued).
Target: 0 lost, 0 run twice beyond their retries, 0 leaked, 0 duplicates.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.infra import node_dir  # noqa: E402

MAX_WORKERS = 3
MAX_RETRIES = 3


def config() -> dict:
    return {
        "cluster_name": "chaos", "max_workers": MAX_WORKERS, "idle_timeout_minutes": 0.05,
        "provider": {"type": "local", "create_failure_rate": 0.2},
        "autoscaler": {"tick_s": 0.5, "backoff_initial_s": 1, "backoff_max_s": 4},
        "runtime": {"heartbeat_interval_s": 0.5, "node_timeout_s": 4},
        "available_node_types": {
            "head": {"resources": {"CPU": 0}, "max_workers": 0},
            "cpu": {"resources": {"CPU": 2}, "min_workers": 0, "max_workers": MAX_WORKERS},
        },
        "head_node_type": "head",
    }


def pid_of(home: Path, daemon: str) -> int | None:
    try:
        return int((node_dir(home) / "pids" / f"{daemon}.pid").read_text())
    except (OSError, ValueError):
        return None


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--max-seconds", type=float, default=600)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    home = Path(tempfile.mkdtemp(prefix="bench-chaos-"))
    os.environ["LAUNCH_HOME"] = str(home)
    marks = home / "marks"
    marks.mkdir()

    from core.config import parse_config
    from launcher.cluster import Cluster
    from providers.local import marked_pids
    import runtime

    from core.errors import CapacityError

    cluster = Cluster(parse_config(config()))
    for attempt in range(10):  # the flaky provider fails the head's creation too: `up` again, as a user would
        try:
            cluster.up(confirm=lambda q: True)
            break
        except CapacityError as e:
            print(f"up: {e}; again", flush=True)
    info = cluster.dir.read_info()
    head_dir = cluster.dir.path / "local" / "nodes" / info["head_node_id"]
    state_file = cluster.dir.path / "local" / "nodes.json"
    runtime.init(address=info["head_address"], token=cluster.dir.token())

    @runtime.remote(num_cpus=1, max_retries=MAX_RETRIES)
    def work(i: int, seconds: float, marks_dir: str) -> int:
        import time as t
        import uuid as u

        open(os.path.join(marks_dir, f"{i}.{u.uuid4().hex}"), "w").close()
        t.sleep(seconds)
        return i

    refs: list = []
    stop = threading.Event()

    def submitter():
        i = 0
        while not stop.is_set():
            for _ in range(3):
                refs.append(work.remote(i, rng.uniform(0.1, 1.5), str(marks)))
                i += 1
            stop.wait(0.5)

    most_workers = 0

    def workers_now() -> list[str]:
        try:
            nodes = json.loads(state_file.read_text())
        except (OSError, ValueError):
            return []
        return [n for n, r in nodes.items() if r.get("node_type") == "cpu"]

    def watch():
        nonlocal most_workers
        while not stop.is_set():
            most_workers = max(most_workers, len(workers_now()))
            stop.wait(0.2)

    def recovered() -> bool:
        if not (alive(pid_of(head_dir, "head")) and alive(pid_of(head_dir, "monitor"))):
            return False
        try:
            from runtime.api import _connection

            state = _connection().client.cluster_state()
        except Exception:  # noqa: BLE001 - the head away: not recovered yet
            return False
        registered = {n.node_id for n in state.nodes if n.state == "alive" and not n.is_head}
        live = {n for n in workers_now() if marked_pids(n)}
        return live == registered  # every live worker registered; a dead one no longer counted

    threading.Thread(target=submitter, daemon=True).start()
    threading.Thread(target=watch, daemon=True).start()
    recovery: dict[str, list[float]] = {"head": [], "autoscaler": [], "worker": []}
    started = time.monotonic()
    cycles = 0
    while cycles < args.cycles and time.monotonic() - started < args.max_seconds:
        time.sleep(rng.uniform(2.0, 5.0))  # chaos at a random moment, not a synchronisation
        victim = rng.choice(["head", "autoscaler", "worker"])
        if victim == "worker":
            nodes = [n for n in workers_now() if marked_pids(n)]
            if not nodes:
                continue
            for pid in marked_pids(rng.choice(nodes)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        else:
            pid = pid_of(head_dir, "head" if victim == "head" else "monitor")
            if not alive(pid):
                continue
            os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        time.sleep(0.2)
        while not recovered() and time.monotonic() - killed < 120:
            time.sleep(0.1)
        recovery[victim].append(time.monotonic() - killed)
        cycles += 1
        print(f"cycle {cycles}: killed the {victim}; recovered in {recovery[victim][-1]:.1f}s", flush=True)
    stop.set()

    completed = failed = lost = 0
    deadline = time.monotonic() + 300
    for ref in list(refs):
        try:
            runtime.get(ref, timeout=max(1.0, deadline - time.monotonic()))
            completed += 1
        except runtime.GetTimeoutError:
            lost += 1
        except runtime.TaskError:
            failed += 1
    runs: dict[str, int] = {}
    for p in marks.iterdir():
        key = p.name.split(".")[0]
        runs[key] = runs.get(key, 0) + 1
    twice = sum(1 for n in runs.values() if n > MAX_RETRIES + 1)
    listed = set(workers_now()) | {info["head_node_id"]}
    nodes_dir = cluster.dir.path / "local" / "nodes"
    strays = [p.name for p in nodes_dir.iterdir() if p.name not in listed and marked_pids(p.name)]
    runtime.shutdown()
    cluster.down()
    left = [p.name for p in nodes_dir.iterdir() if marked_pids(p.name)] if nodes_dir.exists() else []

    print(f"\n{cycles} cycles in {time.monotonic() - started:.0f}s; provider create failure rate 20%")
    print(f"tasks submitted {len(refs)}, completed {completed}, failed after {MAX_RETRIES} retries {failed}, "
          f"lost {lost}")
    print(f"run more than 1+{MAX_RETRIES} times: {twice}; ran more than once (retried): "
          f"{sum(1 for n in runs.values() if n > 1)}")
    print(f"leaked nodes: {len(strays)} while running, {len(left)} after down; "
          f"duplicate launches: {max(0, most_workers - MAX_WORKERS)} (most workers at once: {most_workers})")
    for victim, times in recovery.items():
        if times:
            print(f"recovery after killing the {victim}: median {statistics.median(times):.1f}s, "
                  f"max {max(times):.1f}s ({len(times)} kills)")


if __name__ == "__main__":
    main()
