"""Runtime throughput and latency: launch's local cluster vs Ray's local runtime, same workload, same run.

    .venv/bin/python bench/runtime_throughput.py [--tasks 2000] [--latency-rounds 200]

Ray runs from its own venv (bench/.ray-venv, made with `pip install ray==2.60.0` on first use, or
--ray-python PATH); it is never a dependency of launch. Both get 2 CPUs for tasks.
Workload: N trivial tasks submitted at once then all fetched (throughput); the same N submitted,
waited for, then fetched (a get while tasks run must cost no more than this); and R sequential
submit-then-get round trips of one trivial task (latency). A wait brings the values of what it found
done, in both runtimes, so the get after it is the driver's own work; launch's line fetch_from_head
measures a get of N finished results that must come from the head. Both runtimes are up together, the other idle:
throughput runs alternate (--repeats, each figure the median), latency in alternating blocks (--blocks),
so that both meet the same machine (this one's speed drifts by 20-30% from minute to minute).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Ray's processes get the environment as it is now: launch's modules, once imported, set up gRPC for their
# own processes (runtime/__init__.py), and that setting would reach Ray's too
RAY_ENV = dict(os.environ)
sys.path.insert(0, str(ROOT))

RAY_SCRIPT = r"""
import json, sys, time, logging
import ray
n = int(sys.argv[1])
ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
@ray.remote(num_cpus=1)
def f(x):
    return x
ray.get([f.remote(i) for i in range(200)])  # warm the worker pool
print("ready", flush=True)
for line in sys.stdin:  # "tp": the throughput figures; "K": K sequential round trips' latencies
    if line.strip() == "tp":
        t0 = time.perf_counter()
        refs = [f.remote(i) for i in range(n)]
        t1 = time.perf_counter()
        assert ray.get(refs) == list(range(n))
        t2 = time.perf_counter()
        refs = [f.remote(i) for i in range(n)]
        ray.wait(refs, num_returns=n)
        t3 = time.perf_counter()
        assert ray.get(refs) == list(range(n))
        t4 = time.perf_counter()
        print(json.dumps({"submit_s": t1 - t0, "total_s": t2 - t0, "run_then_get_s": t4 - t2,
                          "get_after_s": t4 - t3}), flush=True)
        continue
    lat = []
    for i in range(int(line)):
        s = time.perf_counter(); ray.get(f.remote(i)); lat.append(time.perf_counter() - s)
    print(json.dumps(lat), flush=True)
"""


@contextmanager
def launch_cluster():
    """A local launch cluster with 2 CPUs for tasks; yields the trivial remote function."""
    home = Path(tempfile.mkdtemp(prefix="bench-launch-"))
    os.environ["LAUNCH_HOME"] = str(home)
    from launcher.cluster import Cluster
    from core.config import parse_config

    cfg = parse_config({
        "cluster_name": "bench", "max_workers": 1, "provider": {"type": "local"},
        "available_node_types": {"head": {"resources": {"CPU": 0}},
                                 "worker": {"resources": {"CPU": 2}, "min_workers": 1, "max_workers": 1}},
        "head_node_type": "head",
    })
    cluster = Cluster(cfg)
    try:
        cluster.up(confirm=lambda q: True)
        import runtime

        info = cluster.dir.read_info()
        runtime.init(address=info["head_address"], token=cluster.dir.token())

        @runtime.remote(num_cpus=1)
        def f(x):
            return x

        runtime.get([f.remote(i) for i in range(200)])  # warm the worker pool
        yield f
        runtime.shutdown()
    finally:
        cluster.down()


def launch_throughput(f, n: int) -> dict:
    import runtime

    t0 = time.perf_counter()
    refs = [f.remote(i) for i in range(n)]
    t1 = time.perf_counter()
    assert runtime.get(refs) == list(range(n))
    t2 = time.perf_counter()
    refs = [f.remote(i) for i in range(n)]
    runtime.wait(refs, num_returns=n)
    t3 = time.perf_counter()
    assert runtime.get(refs) == list(range(n))
    t4 = time.perf_counter()
    # the wait brought the values (as Ray's driver holds them): the head's side of fetching N finished
    # results, measured on refs that come without them
    fresh = [runtime.ObjectRef(r.id) for r in refs]
    t5 = time.perf_counter()
    assert runtime.get(fresh) == list(range(n))
    t6 = time.perf_counter()
    return {"submit_s": t1 - t0, "total_s": t2 - t0, "run_then_get_s": t4 - t2, "get_after_s": t4 - t3,
            "head_fetch_s": t6 - t5}


def launch_latencies(f, rounds: int) -> list[float]:
    import runtime

    lat = []
    for i in range(rounds):
        s = time.perf_counter()
        runtime.get(f.remote(i))
        lat.append(time.perf_counter() - s)
    return lat


def ray_python(given: str | None) -> str:
    if given:
        return given
    venv = ROOT / "bench" / ".ray-venv"
    py = venv / "bin" / "python"
    if not py.exists():
        print("creating bench/.ray-venv with ray==2.60.0 ...", file=sys.stderr)
        subprocess.check_call([sys.executable, "-m", "venv", str(venv)])
    # (virtualenv: what Ray's runtime_env needs for `pip`)
    if subprocess.run([str(py), "-c", "import ray, virtualenv"], capture_output=True).returncode != 0:
        subprocess.check_call([str(py), "-m", "pip", "install", "-q", "ray==2.60.0", "virtualenv"])
    return str(py)


@contextmanager
def ray_runtime(py: str, n: int):
    """Ray's local runtime in its own process, warmed up: yields ask(command) -> its JSON answer ("tp":
    the throughput figures; "K": K round trips' latencies)."""
    proc = subprocess.Popen([py, "-c", RAY_SCRIPT, str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=RAY_ENV)

    def line() -> str:
        out = proc.stdout.readline()
        if not out:
            raise SystemExit(f"ray run failed:\n{proc.stderr.read()[-2000:]}")
        return out

    def ask(command: str):
        proc.stdin.write(f"{command}\n")
        proc.stdin.flush()
        return json.loads(line())

    try:
        assert line().strip() == "ready"
        yield ask
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)


def median_run(runs: list[dict]) -> dict:
    """Each figure's median over the repeated runs (one run of a few seconds meets the machine's drift);
    the get-while-running ratio is taken within each run (its two halves seconds apart), then its median."""
    out = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    out["while_vs_after"] = statistics.median(r["total_s"] / r["run_then_get_s"] for r in runs)
    return out


def summary(r: dict, lat: list[float], n: int) -> dict:
    lat = sorted(lat)
    return {
        "submit_per_s": n / r["submit_s"],
        "throughput_per_s": n / r["total_s"],
        # the same N run with get() from the start vs. waited for then fetched: < 1 means a get that
        # waits while tasks run costs them nothing
        "get_while_running_vs_after": r["while_vs_after"],
        "fetch_done_per_s": n / r["get_after_s"],
        **({"fetch_from_head_per_s": n / r["head_fetch_s"]} if "head_fetch_s" in r else {}),
        "latency_p50_ms": 1000 * statistics.median(lat),
        "latency_p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--latency-rounds", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3, help="throughput runs each (alternating); medians")
    ap.add_argument("--blocks", type=int, default=10, help="latency blocks, alternating launch and Ray")
    ap.add_argument("--ray-python")
    ap.add_argument("--skip-ray", action="store_true")
    args = ap.parse_args()

    with launch_cluster() as f:
        if args.skip_ray:
            ours_tp = median_run([launch_throughput(f, args.tasks) for _ in range(args.repeats)])
            ours, theirs = summary(ours_tp, launch_latencies(f, args.latency_rounds), args.tasks), None
        else:
            with ray_runtime(ray_python(args.ray_python), args.tasks) as ray:
                ours_runs, theirs_runs = [], []
                for _ in range(args.repeats):  # each with the other idle, alternating
                    ours_runs.append(launch_throughput(f, args.tasks))
                    theirs_runs.append(ray("tp"))
                ours_tp, theirs_tp = median_run(ours_runs), median_run(theirs_runs)
                ours_lat, theirs_lat = [], []
                block = max(1, args.latency_rounds // args.blocks)
                for _ in range(args.blocks):
                    ours_lat += launch_latencies(f, block)
                    theirs_lat += ray(str(block))
            ours, theirs = summary(ours_tp, ours_lat, args.tasks), summary(theirs_tp, theirs_lat, args.tasks)
    print(f"workload: {args.tasks} trivial tasks, 2 CPUs, {args.repeats} runs each (medians); "
          f"{args.latency_rounds} sequential round trips ({args.blocks} blocks, alternating)")
    print(f"{'metric':<28}{'launch':>12}{'ray':>12}{'launch/ray':>12}")
    for key in ours:
        if theirs is None or key not in theirs:
            print(f"{key:<28}{ours[key]:>12.2f}{'-':>12}{'-':>12}")
        else:
            print(f"{key:<28}{ours[key]:>12.2f}{theirs[key]:>12.2f}{ours[key] / theirs[key]:>12.2f}")
    print("(per_s: higher is better; ms and get_while_running_vs_after: lower is better)")


if __name__ == "__main__":
    main()
