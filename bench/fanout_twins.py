"""SSH bootstrap fan-out on VM twins, the production path: the head's autoscaler sets up workers over SSH
(an on-prem pool of twins; the laptop reaches the head on port 22 only). Run as root:

    .venv/bin/python bench/fanout_twins.py [--workers 30]

`up` brings the head alone. One one-CPU task is queued (each worker has one CPU): the time to its worker
registered is a node's set-up alone (SSH, shipping the runtime, starting it). Then the other N-1 at once:
the fan-out's wall time, the head autoscaler's CPU per node set up (its process), and the whole machine's
CPU per node (the twins share this machine's cores: their sshd, unpacking and Python start-up run here too,
so here a wide fan-out is bound by this machine's CPU). Projected to 1,000 nodes: on real machines each
node's work runs on its own CPU, so each round of the bounded fan-out (SETUP_FANOUT at a time) takes about a
node's set-up alone, and the head's CPU is the other bound.
Last line: `fanout: workers=N wall_s=X one_node_s=Y head_cpu_s_per_node=Z projected_1000_wall_s=W ...`.
"""

from __future__ import annotations

import argparse
import math
import os
import time

from harness import launch, proc_cpu_s, twin_lab, write

from autoscaler.monitor import SETUP_FANOUT as FANOUT



def machine_cpu_s() -> float:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=30)
    args = parser.parse_args()
    n = args.workers
    from lifecycle.runtime_bundle import build_bundle

    with twin_lab("bench-fanout-") as (net, key, home):
        for kind, provider in (("node", ""), ("head", "ssh")):
            build_bundle(kind, provider)  # built before timing
        t0 = time.monotonic()
        head = net.twin("fan-head", net.ip(11))
        pool = [net.twin(f"fan-w{i}", net.ip(20 + i)) for i in range(n)]
        head.block_laptop()
        print(f"{n + 1} twins started in {time.monotonic() - t0:.1f} s", flush=True)
        laptop, k = net.laptop_for("fanout", key)
        data = {"cluster_name": "bench-fanout", "max_workers": n, "upscaling_speed": 1000,
                "idle_timeout_minutes": 30,
                "provider": {"type": "local", "head_ip": head.ip, "worker_ips": [w.ip for w in pool]},
                "auth": {"ssh_user": "root", "ssh_private_key": str(k)},
                "autoscaler": {"tick_s": 1.0},
                "available_node_types": {"head": {"resources": {"CPU": 0}, "max_workers": 0},
                                         "cpu": {"resources": {"CPU": 1}, "max_workers": n}},
                "head_node_type": "head"}
        path = write(laptop / "fanout.yaml", data)
        launch("up", str(path), "--yes", home=home)
        import runtime

        client = runtime.init(cluster="bench-fanout")

        @runtime.remote(num_cpus=1)
        def hold():
            import time as t
            t.sleep(30.0)  # (busy while the others are set up: each task needs a node of its own)
            return 1

        monitor_pid = int((head.node_dir / "pids" / "monitor.pid").read_text())
        # one node alone: a round's wall time on an unloaded machine
        t0 = time.monotonic()
        refs = [hold.remote()]
        registered(client, 1, t0)
        one = time.monotonic() - t0
        cpu0, m0, t0 = proc_cpu_s(monitor_pid), machine_cpu_s(), time.monotonic()
        refs += [hold.remote() for _ in range(n - 1)]
        registered(client, n, t0)
        wall = time.monotonic() - t0
        head_cpu, machine = proc_cpu_s(monitor_pid) - cpu0, machine_cpu_s() - m0
        runtime.get(refs, timeout=300)
        runtime.shutdown()
        launch("down", str(path), "--yes", home=home)
    report(n, one, wall, head_cpu / (n - 1), machine / (n - 1))


def registered(client, count: int, t0: float) -> None:
    seen = 0
    while seen < count:
        alive = sum(1 for x in client.cluster_state().nodes if x.state == "alive" and not x.is_head)
        if alive > seen:
            seen = alive
            print(f"  {time.monotonic() - t0:6.1f} s: {seen} of {count} registered", flush=True)
        time.sleep(0.2)
        if time.monotonic() - t0 > 1200:
            raise SystemExit(f"only {seen} of {count} registered in 20 min")


def report(n: int, one: float, wall: float, per_node: float, machine_per_node: float) -> None:
    """The projection to 1,000: on real machines each node's own work runs on its own CPU, so a round of the
    fan-out takes about as long as one node alone here; the head's CPU is the other bound."""
    cores = os.cpu_count() or 1
    rounds = math.ceil(1000 / FANOUT)
    by_rounds, by_head = rounds * one, per_node * 1000 / cores
    projected = max(by_rounds, by_head)
    print(f"one node alone: {one:.1f} s from queued to registered")
    print(f"fan-out of {n - 1} more at once: {wall:.1f} s wall; the head's autoscaler {per_node:.3f} CPU-s per node; "
          f"the machine {machine_per_node:.2f} CPU-s per node (twins' own work included: here they share "
          f"{cores} cores, so this fan-out is bound by this machine's CPU)")
    print(f"projected to 1,000 nodes: {rounds} rounds of {FANOUT} x {one:.1f} s = {by_rounds:.0f} s; the head's CPU "
          f"{per_node * 1000:.0f} CPU-s = {by_head:.0f} s on {cores} cores; so ~{projected:.0f} s, bound by "
          f"{'the fan-out' if by_rounds >= by_head else 'the head CPU'}")
    print(f"fanout: workers={n} wall_s={wall:.1f} one_node_s={one:.1f} head_cpu_s_per_node={per_node:.3f} "
          f"projected_1000_wall_s={projected:.0f} projected_1000_head_cpu_s={per_node * 1000:.0f}")


if __name__ == "__main__":
    main()
