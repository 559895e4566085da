"""Slurm: how long work waits for an allocation, and how soon an idle one is given back, against Slurm's
own sbatch-to-running time on the same machine, in the same run.

    sudo .venv/bin/python bench/slurm_scaling.py [--rounds 3]

Starts a private Slurm (tests/infra/slurm.py: munged, slurmctld, one slurmd with 4 CPUs; needs root and
Slurm installed, as `./dev test` does). Slurm's reference: `sbatch` of a job until squeue says RUNNING,
and until its script's first line ran. launch: a cluster with no worker; one task is submitted; figures
are from the submit to the allocation's runtime registered with the head, to the task's result, and from
the task's end (the node idle) to the holder job gone from the queue, less the idle timeout.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

IDLE_TIMEOUT_S = 3.0


def poll(pred, timeout: float = 120.0, every: float = 0.01):
    from tests.infra import wait_for

    return wait_for(pred, timeout=timeout, every=every, what="the step")


def slurm_reference(slurm, rounds: int, tmp: Path) -> dict:
    running, started = [], []
    for i in range(rounds):
        mark = tmp / f"started-{i}"
        t0 = time.perf_counter()
        job = subprocess.run(["sbatch", "--parsable", "-c", "1", "-o", "/dev/null", "--wrap",
                              f"touch {mark}; sleep 600"], env=slurm.env, capture_output=True, text=True,
                             check=True).stdout.strip()
        poll(lambda: subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], env=slurm.env, capture_output=True,
                                    text=True).stdout.strip() == "RUNNING")
        running.append(time.perf_counter() - t0)
        poll(mark.exists)
        started.append(time.perf_counter() - t0)
        slurm.scancel_all()
    return {"running": running, "started": started}


def launch_rounds(slurm, rounds: int, tmp: Path) -> dict:
    os.environ["LAUNCH_HOME"] = str(tmp / "home")
    os.environ["SLURM_CONF"] = str(slurm.conf)
    from core.config import parse_config
    from launcher.cluster import Cluster
    from runtime.client import HeadClient

    cfg = parse_config({
        "cluster_name": "bench-slurm", "max_workers": 2, "idle_timeout_minutes": IDLE_TIMEOUT_S / 60,
        "provider": {"type": "slurm", "node_root": str(tmp / "nodes")},
        "autoscaler": {"tick_s": 0.2},
        "available_node_types": {"head": {"resources": {"CPU": 0}},
                                 "worker": {"node_config": {"cpus": 1}, "max_workers": 1}},
        "head_node_type": "head",
    })
    cluster = Cluster(cfg)
    registered, done, released = [], [], []
    try:
        cluster.up(confirm=lambda q: True)
        import runtime

        info = cluster.dir.read_info()
        runtime.init(address=info["head_address"], token=cluster.dir.token())
        head = HeadClient(info["head_address"], cluster.dir.token())

        @runtime.remote(num_cpus=1)
        def f():
            return os.environ.get("SLURM_JOB_ID")

        def workers():
            return [n for n in head.cluster_state().nodes if not n.is_head and n.state == "alive"]

        for _ in range(rounds):
            t0 = time.perf_counter()
            ref = f.remote()
            poll(workers, every=0.02)
            registered.append(time.perf_counter() - t0)
            job = runtime.get(ref, timeout=300)
            t_done = time.perf_counter()
            done.append(t_done - t0)
            poll(lambda: job not in slurm.queue(), every=0.05)
            released.append(time.perf_counter() - t_done - IDLE_TIMEOUT_S)
            poll(lambda: not workers(), every=0.05)
        runtime.shutdown()
        head.close()
    finally:
        cluster.down()
    return {"registered": registered, "done": done, "released": released}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from tests.infra.slurm import SlurmNode, TestSlurm, slurm_unavailable

    reason = slurm_unavailable()
    if reason:
        raise SystemExit(reason)
    tmp = Path(tempfile.mkdtemp(prefix="bench-slurm-"))
    (tmp / "slurm").mkdir()
    slurm = TestSlurm(tmp / "slurm", [SlurmNode("localhost", "127.0.0.1", cpus=4)]).start()
    try:
        ref = slurm_reference(slurm, args.rounds, tmp)
        ours = launch_rounds(slurm, args.rounds, tmp)
    finally:
        slurm.stop()
    med = statistics.median
    print(f"Slurm {subprocess.run(['sinfo', '-V'], capture_output=True, text=True).stdout.strip()}, "
          f"{args.rounds} rounds, medians (min-max)")
    rows = [
        ("Slurm: sbatch -> RUNNING", ref["running"]),
        ("Slurm: sbatch -> script started", ref["started"]),
        ("launch: task queued -> allocation registered", ours["registered"]),
        ("launch: task queued -> result", ours["done"]),
        (f"launch: idle -> allocation released (less the {IDLE_TIMEOUT_S:.0f} s idle timeout)", ours["released"]),
    ]
    for name, xs in rows:
        print(f"  {name:72} {med(xs):6.2f} s  ({min(xs):.2f}-{max(xs):.2f})")
    print(f"  ratio queued->registered / sbatch->running: {med(ours['registered']) / med(ref['running']):.2f}x; "
          f"overhead over Slurm: {med(ours['registered']) - med(ref['running']):.2f} s")


if __name__ == "__main__":
    main()
