"""launch at scale, on the sim provider (providers/sim.py): the real head service, autoscaler and planner on
this machine, simulated workers whose light agents (runtime/sim_agents.py) speak the head's protocol, many
per process. Run:

    .venv/bin/python bench/scale.py [--sizes 100,300,1000] [--tasks 100000] [--boot 5]

For each size N, a cluster of the head alone is brought up with `launch up`; then:
- demand: N tasks that each need 2 of a worker's 3 CPUs and run an hour (simulated), so N workers;
  register_s: from that demand to all N registered with the head, less the modelled boot time
  (upscaling_speed is set to N: the planner may launch them all at once, as a user scaling to N would);
- quiet: 10 s with N nodes heartbeating (every second, or as the head paces a large cluster): the head's
  CPU per heartbeat;
- throughput: T one-CPU tasks of zero duration through the free CPU of the N nodes: tasks per second
  from submit to the last result, and the head's CPU per task;
- the autoscaler's tick p50 and p99 over the run (the monitor's own figures), the head's and the
  monitor's memory (RSS) at the end;
- down_s: `launch down` of the N nodes and the head.
Goals (issue 33): tick p99 < 1 s at 1,000 nodes, register_s < 60 s, down_s < 60 s. The last line:
    scale: nodes=N tick_p99_s=X register_s=Y down_s=Z
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from harness import launch, proc_cpu_s

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUIET_S = 10.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def head_pids(home: Path, name: str) -> dict[str, int]:
    """The head's daemons (the head service, the autoscaler), from its node's pid files."""
    found = {}
    for pid_file in (home / "clusters" / name / "local" / "nodes").glob("*/.launch-runtime/nodes/*/pids/*.pid"):
        try:
            found[pid_file.stem] = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return found


def sim_alive() -> int:
    import runtime

    return sum(1 for n in runtime.nodes() if n["Alive"] and n["NodeID"].startswith("sim-"))


def one_size(n: int, tasks: int, boot_s: float, tmp: Path) -> dict:
    import yaml

    import runtime
    from runtime.head_nodes import HEARTBEATS_PER_S
    from runtime.sim_agents import DURATION_ENV

    name = f"scale-{n}"
    home = tmp / f"home-{n}"
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "cluster_name": name, "max_workers": n, "upscaling_speed": float(n), "idle_timeout_minutes": 60,
        "provider": {"type": "sim", "boot_time_s": boot_s},
        "autoscaler": {"tick_s": 1.0, "launch_timeout_minutes": 30},
        "available_node_types": {"head": {"resources": {"CPU": 0}, "max_workers": 0},
                                 "cpu": {"resources": {"CPU": 3}, "max_workers": n, "cost_per_hour": 0.1}},
        "head_node_type": "head"}))
    launch("up", str(path), "--yes", home=home, timeout=1800)
    os.environ["LAUNCH_HOME"] = str(home)
    runtime.init(cluster=name)
    pids = head_pids(home, name)
    head, monitor = pids["head"], pids["monitor"]

    @runtime.remote(num_cpus=2)
    def hold():
        return None

    @runtime.remote(num_cpus=1)
    def tick():
        return None

    t0 = time.time()
    holds = [hold.options(runtime_env={"env_vars": {DURATION_ENV: "3600"}}).remote() for _ in range(n)]
    while sim_alive() < n:
        time.sleep(0.5)
    register_s = time.time() - t0 - boot_s
    print(f"  {n} nodes registered {register_s:.1f} s after the demand, beyond the {boot_s:g} s boot", flush=True)

    c0, t1 = proc_cpu_s(head), time.time()
    time.sleep(QUIET_S)
    interval = max(1.0, n / HEARTBEATS_PER_S)  # (the head paces a large cluster's heartbeats)
    per_heartbeat_ms = (proc_cpu_s(head) - c0) / (n * (time.time() - t1) / interval) * 1000

    c0, t1 = proc_cpu_s(head), time.time()
    refs = [tick.remote() for _ in range(tasks)]
    runtime.get(refs, timeout=3600)
    took = time.time() - t1
    per_task_ms = (proc_cpu_s(head) - c0) / tasks * 1000
    print(f"  {tasks} tasks in {took:.1f} s", flush=True)

    status = json.loads(launch("status", str(path), "--json", home=home, timeout=1800).stdout)
    ticks = (status.get("autoscaler") or {}).get("ticks") or {}
    print(f"  ticks: {ticks}", flush=True)
    memory = {"head_mib": round(rss_mib(head), 1), "monitor_mib": round(rss_mib(monitor), 1)}
    del holds  # (they go with their nodes at `down`)
    runtime.shutdown()
    t1 = time.time()
    launch("down", str(path), "--yes", home=home, timeout=1800)
    down_s = time.time() - t1
    return {"nodes": n, "register_s": round(register_s, 1), "tick_p50_s": ticks.get("p50_s"),
            "tick_p99_s": ticks.get("p99_s"), "ticks": ticks.get("count"),
            "head_cpu_ms_per_heartbeat": round(per_heartbeat_ms, 3), "tasks_per_s": round(tasks / took),
            "head_cpu_ms_per_task": round(per_task_ms, 3), **memory, "down_s": round(down_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,300,1000")
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--boot", type=float, default=5.0, help="the simulated instances' boot time, s")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        print(f"{n} nodes:", flush=True)
        results.append(one_size(n, args.tasks, args.boot, tmp))
        print(json.dumps(results[-1]), flush=True)
    print(f"\n{'nodes':>6} {'register s':>11} {'tick p50/p99 s':>15} {'head ms/heartbeat':>18} {'tasks/s':>8} "
          f"{'head ms/task':>13} {'head/monitor MiB':>17} {'down s':>7}")
    for r in results:
        print(f"{r['nodes']:>6} {r['register_s']:>11.1f} {r['tick_p50_s']!s:>7}/{r['tick_p99_s']!s:<7} "
              f"{r['head_cpu_ms_per_heartbeat']:>18.3f} {r['tasks_per_s']:>8} {r['head_cpu_ms_per_task']:>13.3f} "
              f"{r['head_mib']:>8}/{r['monitor_mib']:<8} {r['down_s']:>7.1f}")
    last = results[-1]
    print(f"scale: nodes={last['nodes']} tick_p99_s={last['tick_p99_s']} register_s={last['register_s']} "
          f"down_s={last['down_s']}")


if __name__ == "__main__":
    main()
