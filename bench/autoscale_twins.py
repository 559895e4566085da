"""Autoscaling on VM twins, the production path: laptop -> head over SSH -> autoscaler on the head ->
provider (an on-prem pool, or EC2 on moto) -> workers set up over SSH from the head. Run as root:

    .venv/bin/python bench/autoscale_twins.py [--rounds 3]

For each provider it brings a cluster up (head only), then per round queues work that needs one more
worker and measures:
- queued -> registered: from submitting the work to the new worker registering with the head (claim
  or create, SSH, ship the runtime, start it);
- done -> gone: from the last work finishing to the worker leaving the cluster (idle timeout, drain,
  terminate, removed from the head), with the idle timeout subtracted: the control loop's own delay;
- CPU seconds per worker set up: the launcher's (`launch up` of a cluster whose head sets up N
  workers, over N) and the head's (its autoscaler process, per worker it set up).
The twins share this machine's cores; the figures include their own work (sshd, unpacking the
runtime, starting Python), which on real machines runs on each machine's own CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

from harness import launch, proc_cpu_s, twin_lab, write

IDLE_TIMEOUT_MIN = 0.05  # 3 s


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


TIMELINE = "--timeline" in sys.argv  # print the autoscaler's events of each round, from the work queued


def timeline(log: Path, since: float) -> None:
    for line in log.read_text().splitlines():
        event = json.loads(line)
        if event["ts"] >= since - 1:
            rest = {k: v for k, v in event.items() if k not in ("ts", "event")}
            print(f"  {event['ts'] - since:+7.3f} s  {event['event']:<14} {json.dumps(rest)[:150]}", flush=True)
    print(f"  {time.time() - since:+7.3f} s  (registered, seen by the bench)", flush=True)


def measure(name: str, path: Path, home: Path, head_root, rounds: int, task_cpus: int, workers_for_up: int,
            data: dict) -> dict:
    import runtime

    t = children_cpu_s()
    launch("up", str(path), "--yes", home=home)
    up_head_only = children_cpu_s() - t

    os.environ["LAUNCH_HOME"] = str(home)
    client = runtime.init(cluster=data["cluster_name"])

    @runtime.remote(num_cpus=task_cpus)
    def work():
        import time as t
        t.sleep(0.5)
        return 1

    monitor_pid = int((head_root() / "pids" / "monitor.pid").read_text())
    cpu0 = proc_cpu_s(monitor_pid)
    to_registered, to_gone = [], []
    for _ in range(rounds):
        before = {n.node_id for n in client.cluster_state().nodes if n.state == "alive"}
        queued, queued_at = time.monotonic(), time.time()
        ref = work.remote()
        while not ({n.node_id for n in client.cluster_state().nodes if n.state == "alive"} - before):
            time.sleep(0.05)
        to_registered.append(time.monotonic() - queued)
        if TIMELINE:
            timeline(head_root() / "logs" / "autoscaler.log", queued_at)
        runtime.get(ref, timeout=300)
        done = time.monotonic()
        while len([n for n in client.cluster_state().nodes if n.state == "alive"]) > len(before):
            time.sleep(0.05)
        to_gone.append(time.monotonic() - done - IDLE_TIMEOUT_MIN * 60)
    head_cpu = (proc_cpu_s(monitor_pid) - cpu0) / rounds
    runtime.shutdown()

    # the launcher's share when the head sets up `workers_for_up` workers during `up`
    launch("down", str(path), "--yes", home=home)
    types = data["available_node_types"]
    write(path, {**data, "available_node_types": {**types, "cpu": {**types["cpu"], "min_workers": workers_for_up}}})
    t = children_cpu_s()
    launch("up", str(path), "--yes", home=home)
    up_with_workers = children_cpu_s() - t
    launch("down", str(path), "--yes", home=home)
    return {"provider": name, "queued_to_registered_s": to_registered, "done_to_gone_s": to_gone,
            "head_cpu_s_per_worker": head_cpu, "launcher_cpu_s_up_head_only": up_head_only,
            "launcher_cpu_s_per_worker": max(0.0, up_with_workers - up_head_only) / workers_for_up,
            "launcher_cpu_s_up_with_workers": up_with_workers}


def main() -> None:
    from tests.infra.moto_twins import MotoTwins

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeline", action="store_true", help="the autoscaler's events of each round")
    args = parser.parse_args()
    results = []
    from lifecycle.runtime_bundle import build_bundle

    with twin_lab("bench-twins-") as (net, key, home):
        for kind, provider in (("node", ""), ("head", "ssh"), ("head", "aws")):
            build_bundle(kind, provider)  # built before timing: every `up` measures the same work
        cloud = MotoTwins(net)
        try:
            run_both(net, key, home, cloud, args, results)
        finally:
            cloud.close()
    report(results)


def run_both(net, key, home, cloud, args, results) -> None:
    # on-prem: a typed pool whose head takes no work, so every task needs a worker host
    head = net.twin("bench-head", net.ip(11))
    pool = [net.twin(f"bench-w{i}", net.ip(20 + i)) for i in range(2)]
    head.block_laptop()
    laptop, k = net.laptop_for("onprem", key)
    onprem = {"cluster_name": "bench-onprem", "max_workers": 2, "idle_timeout_minutes": IDLE_TIMEOUT_MIN,
              "provider": {"type": "local", "head_ip": head.ip, "worker_ips": [w.ip for w in pool]},
              "auth": {"ssh_user": "root", "ssh_private_key": str(k)},
              "autoscaler": {"tick_s": 0.5}, "runtime": {"heartbeat_interval_s": 0.3, "node_timeout_s": 3},
              "available_node_types": {"head": {"resources": {"CPU": 0}, "max_workers": 0},
                                       "cpu": {"resources": {"CPU": 1}, "max_workers": 2}},
              "head_node_type": "head"}
    path = write(laptop / "onprem.yaml", onprem)
    results.append(measure("on-prem (ssh pool)", path, home, lambda: head.node_dir, args.rounds,
                           1, 2, onprem))

    laptop, k = net.laptop_for("aws", key)
    ami = "ami-12c6146b"
    aws = {"cluster_name": "bench-aws", "max_workers": 2, "idle_timeout_minutes": IDLE_TIMEOUT_MIN,
           "provider": cloud.provider(ssh_wait_s=60),
           "auth": {"ssh_user": "root", "ssh_private_key": str(k), "ssh_public_key": f"{k}.pub"},
           "autoscaler": {"tick_s": 0.5}, "runtime": {"heartbeat_interval_s": 0.3, "node_timeout_s": 3},
           "available_node_types": {
               "head": {"node_config": {"InstanceType": "m5.large", "ImageId": ami}, "resources": {"CPU": 0}},
               "cpu": {"node_config": {"InstanceType": "m5.xlarge", "ImageId": ami}, "max_workers": 2}},
           "head_node_type": "head"}
    path = write(laptop / "aws.yaml", aws)

    def aws_head_root():
        (instance,) = [i for i, name in cloud.instances.items()
                       if (net.twins[name].node_dir / "pids" / "monitor.pid").exists()]
        return net.twins[instance].node_dir

    results.append(measure("aws (moto, twins)", path, home, aws_head_root, args.rounds, 4, 2, aws))


def report(results: list[dict]) -> None:
    print(f"{'provider':<22} {'queued->registered s':>22} {'done->gone s (- idle)':>22} "
          f"{'head CPU-s/worker':>18} {'launcher CPU-s/worker':>22}")
    for r in results:
        q, g = r["queued_to_registered_s"], r["done_to_gone_s"]
        print(f"{r['provider']:<22} {statistics.median(q):>10.2f} (max {max(q):5.2f}) "
              f"{statistics.median(g):>10.2f} (max {max(g):5.2f}) {r['head_cpu_s_per_worker']:>18.2f} "
              f"{r['launcher_cpu_s_per_worker']:>22.2f}")
        print(f"  launcher CPU-s: `up` of the head alone {r['launcher_cpu_s_up_head_only']:.2f}, "
              f"`up` whose head sets up 2 workers {r['launcher_cpu_s_up_with_workers']:.2f}")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
