"""The conformance programs (tests/ray_programs/*.py) run unchanged on Ray, to show they are Ray programs:
what the test suite runs on launch with only the imports changed.

    .venv/bin/python bench/ray_conformance.py [--ray-python PATH] [PROGRAM ...]

Ray runs from its own venv (bench/.ray-venv, made with `pip install ray==2.60.0` on first use, or
--ray-python). A Ray head is started here with the resources the programs ask of a cluster (the same
totals as the launch cluster of tests/test_ray_programs.py: CPUs, 2 GPUs declared, `special: 1`), and
each program connects to it (RAY_ADDRESS). Prints one line per program (passed / failed, seconds) and
the failures' last lines; exit 1 if any failed.
"""

from __future__ import annotations

import argparse
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


def totals() -> dict[str, float]:
    out: dict[str, float] = {}
    for resources in CLUSTER.values():
        for k, v in resources.items():
            out[k] = out.get(k, 0) + v
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ray-python")
    ap.add_argument("names", nargs="*", help="programs to run (default: all)")
    args = ap.parse_args()
    py = ray_python(args.ray_python)
    ray = str(Path(py).parent / "ray")
    total = totals()
    custom = {k: v for k, v in total.items() if k not in ("CPU", "GPU")}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAUNCH_", "PYTHONPATH"))}
    env["RAY_ADDRESS"] = "127.0.0.1:6389"
    subprocess.run([ray, "stop", "--force"], env=env, capture_output=True)
    start = subprocess.run([ray, "start", "--head", "--port", "6389", "--node-ip-address", "127.0.0.1",
                            "--num-cpus", str(int(total["CPU"])),
                            "--num-gpus", str(int(total["GPU"])), "--resources", str(custom).replace("'", '"'),
                            "--include-dashboard", "false", "--disable-usage-stats"],
                           env=env, capture_output=True, text=True)
    if start.returncode != 0:
        print(start.stdout[-2000:], start.stderr[-2000:], file=sys.stderr)
        return 1
    failed = 0
    try:
        for program in programs():
            if args.names and program.stem not in args.names:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.monotonic()
                r = subprocess.run([py, str(program)], capture_output=True, text=True, timeout=600, env=env, cwd=tmp)
                took = time.monotonic() - t0
            ok = r.returncode == 0 and r.stdout.strip().endswith("OK")
            failed += not ok
            print(f"{program.stem:24} {'passed' if ok else 'FAILED'} on Ray ({took:.1f} s)")
            if not ok:
                print("    " + "\n    ".join((r.stdout + r.stderr).strip().splitlines()[-8:]))
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
