"""A large result's cost in memory, in each process it crosses: the worker that returns it, the node agent
that uploads it to the head, the head, and the client that `get`s it.

    .venv/bin/python bench/large_results.py [--gib 1]

A local cluster (a head and one worker node); a task returns `b"x" * N`. Each process's peak RSS is
reset just before (/proc/PID/clear_refs; root) and read after the value is in the client's hands.
Printed: each peak above its resting RSS, as a multiple of N. The reference (issue 28, the probe of a
3 GB result) was ~1.9x in each of the worker, the agent and the client; the client's old way (the
whole pickle fetched into memory, then unpickled) is measured in the same run on the same result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.infra import cli, local_cluster, node_dir, write_config  # noqa: E402


def status_kib(pid: int | str, field: str) -> int:
    return int(next(ln.split()[1] for ln in open(f"/proc/{pid}/status") if ln.startswith(field + ":")))


def reset_peak(pid: int | str) -> int:
    """Start the process's peak again from now; its resting RSS (KiB)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
    return status_kib(pid, "VmRSS")


def workers_of(node_id: str) -> list[int]:
    from core.machine import pids_with_env
    from core.paths import NODE_MARKER_ENV

    found = []
    for pid in pids_with_env(NODE_MARKER_ENV, node_id):
        try:
            if b"runtime.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            pass
    return found


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("resetting peak memory (/proc/PID/clear_refs) needs root")
    size = int(args.gib * (1 << 30))
    tmp = Path(tempfile.mkdtemp(prefix="bench-results-"))
    home = tmp / "home"
    data = local_cluster("bigresults", autoscaler={"enabled": False})
    data["available_node_types"] = {"head": {"resources": {"CPU": 0}, "max_workers": 0},
                                    "cpu": {"resources": {"CPU": 1}, "min_workers": 1, "max_workers": 1}}
    path = write_config(tmp / "cluster.yaml", data)
    r = cli("up", str(path), "--yes", home=home)
    if r.returncode:
        sys.exit(r.stderr)
    import cloudpickle

    import runtime
    from runtime.api import _connection

    cdir = home / "clusters" / "bigresults"
    info = json.loads((cdir / "cluster.json").read_text())
    st = json.loads(cli("status", str(path), "--json", home=home).stdout)
    ids = {n["node_type"]: n["id"] for n in st["nodes"]}
    nodes = cdir / "local" / "nodes"
    agent = int((node_dir(nodes / ids["cpu"]) / "pids" / "agent.pid").read_text())
    head = int((node_dir(nodes / ids["head"]) / "pids" / "head.pid").read_text())
    runtime.init(address=info["head_address"], token=(cdir / "token").read_text().strip())
    try:
        @runtime.remote(num_cpus=1)
        def blob(n: int) -> bytes:
            return b"x" * n

        runtime.get(blob.remote(10), timeout=60)  # the worker process is up and pooled
        (worker,) = workers_of(ids["cpu"])
        rest = {name: reset_peak(pid) for name, pid in
                (("worker", worker), ("agent", agent), ("head", head), ("client", "self"))}
        ref = blob.remote(size)
        value = runtime.get(ref, timeout=600)
        assert len(value) == size
        peaks = {name: status_kib(pid, "VmHWM") for name, pid in
                 (("worker", worker), ("agent", agent), ("head", head), ("client", "self"))}
        del value
        old_rest = reset_peak("self")
        old = cloudpickle.loads(_connection().client.fetch_result(ref.id))  # the client's way before
        old_peak = status_kib("self", "VmHWM")
        del old
    finally:
        runtime.shutdown()
        cli("down", str(path), "--yes", home=home)
    print(f"a {size / 2**30:.2f} GiB result (b'x' * N): peak memory above rest, as a multiple of N")
    for name in peaks:
        extra = (peaks[name] - rest[name]) * 1024
        print(f"  {name:7s} {extra / 2**20:8.0f} MiB  {extra / size:5.2f}x")
    extra = (old_peak - old_rest) * 1024
    print(f"  client, the whole pickle fetched then unpickled (as before): {extra / 2**20:.0f} MiB  "
          f"{extra / size:.2f}x")
    print("reference (issue 28's probe, 3 GB): ~1.9x in each of the worker, the agent and the client")


if __name__ == "__main__":
    main()
