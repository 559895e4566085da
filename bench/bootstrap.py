"""Time to bootstrap 1 vs 16 real SSH hosts (sshd on loopback addresses), run as root on this machine.

    .venv/bin/python bench/bootstrap.py [--hosts 16]

Each `up` ships the runtime bundle to every host, runs setup, starts the runtime and waits until every
node has registered with the head. The runtime bundle is built before timing so both runs measure
the same work. Prints wall times and the ratio (the target: 16 hosts well under 2x one host), and how
busy the whole machine was: here every "host" shares this machine's cores, so a saturated machine
means the hosts' own work (sshd, unpacking, starting Python runtimes), not the launcher, sets the pace.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def machine_cpu_s() -> float:
    """CPU seconds this whole machine has spent busy (every core, every process)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def timed_up(lab, n_hosts: int, base: Path) -> tuple[float, float]:
    from launcher.cluster import Cluster
    from core.config import parse_config
    from tests.infra import ssh_cluster

    head = lab.host()
    workers = [lab.host().address for _ in range(n_hosts - 1)]
    data = ssh_cluster(f"bench{n_hosts}", lab, head, workers, setup_commands=["echo setup > ~/setup.txt"])
    cluster = Cluster(parse_config(data, base_dir=base))
    t0, c0, m0 = time.perf_counter(), time.process_time(), machine_cpu_s()
    cluster.up(confirm=lambda q: True)
    first = time.perf_counter() - t0
    busy = machine_cpu_s() - m0
    print(f"  {n_hosts} host(s): {first:.2f}s wall; the launcher used {time.process_time() - c0:.2f}s CPU; "
          f"the machine was busy {busy:.2f} CPU-s of {first * os.cpu_count():.2f} available "
          f"({100 * busy / (first * os.cpu_count()):.0f}%)", file=sys.stderr)
    t0 = time.perf_counter()
    cluster.up(confirm=lambda q: True)  # nothing changed
    again = time.perf_counter() - t0
    cluster.down()
    return first, again


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=16)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/bootstrap.py starts sshd hosts: run it as root")
    os.makedirs("/run/sshd", exist_ok=True)
    from tests.infra import SSHLab

    base = Path(tempfile.mkdtemp(prefix="bench-bootstrap-"))
    os.environ["LAUNCH_HOME"] = str(base / "home")
    from lifecycle.runtime_bundle import build_bundle

    _, bundle = build_bundle()
    lab = SSHLab(base / "lab")
    try:
        one, one_again = timed_up(lab, 1, base)
        many, many_again = timed_up(lab, args.hosts, base)
    finally:
        lab.close()
    print(f"runtime bundle: {bundle.stat().st_size / 2**20:.1f} MiB; {os.cpu_count()} CPU cores here")
    print(f"{'hosts':<8}{'up (s)':>10}{'up again (s)':>15}")
    print(f"{1:<8}{one:>10.2f}{one_again:>15.2f}")
    print(f"{args.hosts:<8}{many:>10.2f}{many_again:>15.2f}")
    print(f"ratio {args.hosts}/1: {many / one:.2f}x (first up), {many_again / one_again:.2f}x (unchanged up)")


if __name__ == "__main__":
    main()
