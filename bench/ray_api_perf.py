"""Actor calls and put/get, launch vs Ray, same workload, same run (issue 30's performance figures).

    .venv/bin/python bench/ray_api_perf.py [--repeats 3] [--scale 1.0] [--ray-python PATH]

The workload is bench/api_workload.py's run(ray), one function both runtimes run: 1:1 actor calls on a
plain and on an async actor (sync: each result awaited before the next call; async: all sent, then all
gotten), and put-then-get round trips of 1 MB and 100 MB values. launch runs a local cluster (2 CPUs
for work, as in bench/runtime_throughput.py), Ray its local runtime with 2 CPUs, from bench/.ray-venv.
Runs alternate, the other runtime idle; each figure is the median of --repeats runs. For tasks'
throughput and round trip see bench/runtime_throughput.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import api_workload  # noqa: E402
from bench.runtime_throughput import RAY_ENV, launch_cluster, ray_python  # noqa: E402

RAY_SCRIPT = r"""
import json, logging, sys
sys.path.insert(0, sys.argv[1])
import api_workload
import ray
ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
print("ready", flush=True)
for line in sys.stdin:
    print(json.dumps(api_workload.run(ray, float(line))), flush=True)
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="of the workload's counts")
    ap.add_argument("--ray-python")
    ap.add_argument("--each", action="store_true", help="print each run's figures too")
    args = ap.parse_args()
    proc = subprocess.Popen([ray_python(args.ray_python), "-c", RAY_SCRIPT, str(ROOT / "bench")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=RAY_ENV)
    assert proc.stdout.readline().strip() == "ready", "Ray did not start"
    ours, theirs = [], []
    try:
        with launch_cluster():
            import runtime

            for _ in range(args.repeats):
                ours.append(api_workload.run(runtime, args.scale))
                proc.stdin.write(f"{args.scale}\n")
                proc.stdin.flush()
                theirs.append(json.loads(proc.stdout.readline()))
    finally:
        proc.stdin.close()
        proc.wait(timeout=120)
    print(f"{args.repeats} runs each, alternating (medians, and each run's ratio's range); per second, higher is better")
    print(f"{'metric':<30}{'launch':>12}{'ray':>12}{'launch/ray':>12}{'range':>14}")
    for key in ours[0]:
        a, b = statistics.median(r[key] for r in ours), statistics.median(r[key] for r in theirs)
        ratios = [x[key] / y[key] for x, y in zip(ours, theirs)]
        print(f"{key:<30}{a:>12.1f}{b:>12.1f}{a / b:>12.2f}{min(ratios):>8.2f}-{max(ratios):.2f}")
        if args.each:
            print(f"{'':<6}launch: {' '.join(f'{r[key]:.1f}' for r in ours)}; ray: {' '.join(f'{r[key]:.1f}' for r in theirs)}")


if __name__ == "__main__":
    main()
