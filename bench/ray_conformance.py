"""The conformance programs (tests/ray_programs/*.py) run unchanged on Ray, to show they are Ray programs:
what the test suite runs on launch with only the imports changed.

    .venv/bin/python bench/ray_conformance.py [--ray-python PATH] [PROGRAM ...]

Ray runs from its own venv (bench/.ray-venv, made with `pip install ray==2.60.0` on first use, or
--ray-python). Ray's own multi-node cluster is started here (ray.cluster_utils.Cluster: the same
nodes as the launch cluster of tests/test_ray_programs.py: a raylet per node, with its CPUs, 2 GPUs
declared, `special: 1`), and each program connects to it (RAY_ADDRESS). Prints one line per program (passed / failed, seconds) and
the failures' last lines; exit 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.runtime_throughput import ray_python  # noqa: E402
from tests.infra.ray_programs import CLUSTER, programs  # noqa: E402


# Ray's own multi-node cluster on one machine (ray.cluster_utils.Cluster: a raylet per node), one node per
# node of the launch cluster, printed address, shut down when its stdin closes
RAY_CLUSTER = r"""
import json, sys
from ray.cluster_utils import Cluster
nodes = json.loads(sys.argv[1])
cluster = Cluster(initialize_head=True, head_node_args={**nodes[0], "include_dashboard": False})
for node in nodes[1:]:
    cluster.add_node(**node)
cluster.wait_for_nodes()
print(cluster.address, flush=True)
sys.stdin.read()
cluster.shutdown()
"""


def ray_nodes() -> list[dict]:
    """CLUSTER's nodes as Ray's node arguments."""
    return [{"num_cpus": int(r.get("CPU", 0)), "num_gpus": int(r.get("GPU", 0)),
             "resources": {k: v for k, v in r.items() if k not in ("CPU", "GPU")}} for r in CLUSTER.values()]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ray-python")
    ap.add_argument("names", nargs="*", help="programs to run (default: all)")
    args = ap.parse_args()
    py = ray_python(args.ray_python)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAUNCH_", "PYTHONPATH", "RAY_ADDRESS"))}
    cluster = subprocess.Popen([py, "-c", RAY_CLUSTER, json.dumps(ray_nodes())], env=env, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    address = cluster.stdout.readline().strip()
    if not address:
        print("Ray's cluster did not start", file=sys.stderr)
        return 1
    env["RAY_ADDRESS"] = address
    failed = 0
    try:
        for program in programs():
            if args.names and program.stem not in args.names:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.monotonic()
                r = subprocess.run([py, str(program)], capture_output=True, text=True, timeout=600, env=env, cwd=tmp)
                took = time.monotonic() - t0
            ok = r.returncode == 0 and "OK" in r.stdout.splitlines()  # (Ray prints workers' lines after it too)
            failed += not ok
            print(f"{program.stem:24} {'passed' if ok else 'FAILED'} on Ray ({took:.1f} s)", flush=True)
            if not ok:
                print("    " + "\n    ".join((r.stdout + r.stderr).strip().splitlines()[-25:]), flush=True)
    finally:
        cluster.stdin.close()
        cluster.wait(timeout=120)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
