"""SSH bootstrap fan-out on VM twins, the production path: the head's autoscaler sets up N workers at once
over SSH (an on-prem pool of N twins; the laptop reaches the head on port 22 only). Run as root:

    .venv/bin/python bench/fanout_twins.py [--workers 30]

`up` brings the head alone; then N one-CPU tasks are queued at once (each worker has one CPU), and it
measures, from the queue to every worker registered: the fan-out's wall time, the head autoscaler's CPU
per node set up (its process: planning, SSH, shipping the runtime, starting it), and the whole machine's
CPU (the twins share this machine's cores: their sshd, unpacking and Python start-up run here too). It
projects both to 1,000 nodes: the head's CPU scales with the node count; the wall time with the rounds
of the bounded fan-out (the monitor sets up FANOUT nodes at a time), each as long as a round here
(on real machines a node's own work runs on its own CPU, so a round here is the longer).
Last line: `fanout: workers=N wall_s=X head_cpu_s_per_node=Y projected_1000_wall_s=Z projected_1000_head_cpu_s=W`.
"""

from __future__ import annotations

import argparse
import math
import os
import time

from twinlab import launch, proc_cpu_s, twin_lab, write

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
            t.sleep(1.0)
            return 1

        monitor_pid = int((head.node_dir / "pids" / "monitor.pid").read_text())
        cpu0, m0, t0 = proc_cpu_s(monitor_pid), machine_cpu_s(), time.monotonic()
        refs = [hold.remote() for _ in range(n)]
        seen = []
        while len(seen) < n:
            alive = [x for x in client.cluster_state().nodes if x.state == "alive" and not x.is_head]
            if len(alive) > len(seen):
                seen = alive
                print(f"  {time.monotonic() - t0:6.1f} s: {len(seen)} of {n} registered", flush=True)
            time.sleep(0.2)
            if time.monotonic() - t0 > 1200:
                raise SystemExit(f"only {len(seen)} of {n} registered in 20 min")
        wall = time.monotonic() - t0
        head_cpu, machine = proc_cpu_s(monitor_pid) - cpu0, machine_cpu_s() - m0
        runtime.get(refs, timeout=300)
        runtime.shutdown()
        launch("down", str(path), "--yes", home=home)
    rounds = math.ceil(n / FANOUT)
    per_round = wall / rounds
    projected_wall = math.ceil(1000 / FANOUT) * per_round
    per_node = head_cpu / n
    print(f"fan-out of {n} workers: {wall:.1f} s wall ({rounds} round(s) of at most {FANOUT}, {per_round:.1f} s "
          f"each); the head's autoscaler used {head_cpu:.1f} CPU-s ({per_node:.2f} per node); the machine "
          f"{machine:.1f} CPU-s ({machine / n:.2f} per node, twins included)")
    print(f"projected to 1,000 nodes: {math.ceil(1000 / FANOUT)} rounds x {per_round:.1f} s = {projected_wall:.0f} s "
          f"wall; the head {per_node * 1000:.0f} CPU-s ({per_node * 1000 / projected_wall:.2f} cores busy over it)")
    print(f"fanout: workers={n} wall_s={wall:.1f} head_cpu_s_per_node={per_node:.3f} "
          f"projected_1000_wall_s={projected_wall:.0f} projected_1000_head_cpu_s={per_node * 1000:.0f}")


if __name__ == "__main__":
    main()
