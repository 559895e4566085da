"""A spot preemption, with and without a notice, on AWS (moto) twins: the production path (a head whose
autoscaler calls EC2 with its instance's role, workers set up over SSH from the head, each twin with its
own metadata service giving EC2's spot notice). Run as root:

    .venv/bin/python bench/preemption.py [--deadline 20]

A GPU task of 600 steps of 0.1 s runs on a spot worker, which is taken back 30 s in, three ways:
- status quo: no notice; the instance is terminated, the node is seen lost by its heartbeats stopping
  (as before issue 32, and as on a cloud or node that gives no notice);
- notice: EC2's notice `--deadline` seconds ahead (EC2 gives 120 s), the instance terminated then; the
  task has no hook;
- notice + hook: the same, and the task saves its step in its preemption hook and exits.

For each: when the replacement registered with the head, from the loss (negative: before it); the task
time redone (the steps the lost attempt had run past the step the rerun started from, in seconds); the
task's result, from the loss.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from harness import launch, twin_lab, write

STEPS, STEP_S = 600, 0.1  # a 60 s task
LOSS_STEP = 300  # the node is lost 30 s into it
AMI = "ami-12c6146b"


def tasks():
    """(store, work): a checkpoint actor on the head and the long task (tests/infra/cloud_work.py has the
    tests' own); the task writes its step to ~/progress-<key> on its node: the step it reached is known."""
    import runtime
    from runtime.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @runtime.remote(num_cpus=0)
    class Checkpoints:
        def __init__(self):
            self.saved = {}

        def save(self, key, step):
            self.saved[key] = step

        def load(self, key):
            return self.saved.get(key, 0)

    (head,) = [n["NodeID"] for n in runtime.nodes() if n["IsHead"] and n["Alive"]]
    store = Checkpoints.options(scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)).remote()

    @runtime.remote(num_cpus=1, num_gpus=1, max_retries=3)
    def work(store, key, hook):
        import os
        import pathlib
        import socket
        import time as t

        import runtime as rt

        start = rt.get(store.load.remote(key)) if hook else 0
        progress = pathlib.Path.home() / f"progress-{key.replace(' ', '-')}"  # this run's own
        step = {"now": start}

        def save(notice):
            rt.get(store.save.remote(key, step["now"]))
            os._exit(0)

        if hook:
            rt.on_preemption(save)
        for i in range(start, STEPS):
            step["now"] = i
            progress.write_text(str(i))
            t.sleep(STEP_S)
        return socket.gethostname(), start

    return store, work


def gpu_nodes() -> list[str]:
    import runtime

    return [n["NodeID"] for n in runtime.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0]


def one(mode: str, cloud, store, work, deadline_s: float) -> dict:
    """The node is lost when the task reaches LOSS_STEP, every way; a notice comes `deadline_s` before."""
    import runtime
    from tests.infra import wait_for

    ref = work.remote(store, mode, mode == "notice + hook")
    name = f"progress-{mode.replace(' ', '-')}"
    busy = wait_for(lambda: [n for n in gpu_nodes() if (cloud.twin(n) and (cloud.twin(n).root / name).exists())],
                    timeout=300, every=0.05, what="the task running")[0]
    progress = cloud.twin(busy).root / name
    lead = 0 if mode == "status quo" else int(deadline_s / STEP_S)
    wait_for(lambda: int(progress.read_text() or 0) >= LOSS_STEP - lead, timeout=300, every=0.02,
             what="the task at the step where the cloud acts")
    registered = []
    if mode != "status quo":
        notice_at = time.time()
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(notice_at + deadline_s))
        cloud.metadata[busy].set(spot_action={"action": "terminate", "time": at})
        wait_for(lambda: [n for n in gpu_nodes() if n != busy], timeout=300, every=0.05, what="the replacement")
        registered.append(time.time())
        time.sleep(max(0.0, notice_at + deadline_s - time.time()))  # the deadline: EC2 takes the instance
    reached = int(progress.read_text() or 0)
    lost_at = time.time()
    cloud.ec2.terminate_instances(InstanceIds=[busy])
    if not registered:
        wait_for(lambda: [n for n in gpu_nodes() if n != busy], timeout=300, every=0.05, what="the replacement")
        registered.append(time.time())
    host, started = runtime.get(ref, timeout=600)
    return {"mode": mode, "replacement_vs_loss_s": round(registered[0] - lost_at, 2), "reached_step": reached,
            "resumed_at_step": started, "redone_s": round(max(0, reached + 1 - started) * STEP_S, 1),
            "result_after_loss_s": round(time.time() - lost_at, 1), "ran_on": host, "lost": busy}


def main() -> None:
    from tests.infra.moto_twins import LAPTOP_ENV, MotoTwins

    parser = argparse.ArgumentParser()
    parser.add_argument("--deadline", type=float, default=20.0, help="seconds from the notice to the loss")
    args = parser.parse_args()
    import runtime

    results = []
    with twin_lab("bench-preempt-") as (net, key, home):
        os.environ.update(LAPTOP_ENV)
        cloud = MotoTwins(net)
        laptop, k = net.laptop_for("aws", key)
        path = write(laptop / "preempt.yaml", {
            "cluster_name": "bench-preempt", "max_workers": 3, "idle_timeout_minutes": 5,
            "provider": cloud.provider(keys=False, use_internal_ips=True, ssh_wait_s=60),
            "auth": {"ssh_user": "root", "ssh_private_key": str(k), "ssh_public_key": f"{k}.pub"},
            "autoscaler": {"tick_s": 0.5}, "runtime": {"heartbeat_interval_s": 0.3, "node_timeout_s": 3},
            "available_node_types": {
                "head": {"node_config": {"InstanceType": "m5.large", "ImageId": AMI}, "resources": {"CPU": 0}},
                "gpu-spot": {"node_config": {"InstanceType": "g4dn.xlarge", "ImageId": AMI}, "spot": True,
                             "cost_per_hour": 0.2, "max_workers": 3}},
            "head_node_type": "head"})
        try:
            launch("up", str(path), "--yes", home=home)
            runtime.init(cluster="bench-preempt")
            store, work = tasks()
            for mode in ("status quo", "notice", "notice + hook"):
                results.append(one(mode, cloud, store, work, args.deadline))
                print(json.dumps(results[-1]), flush=True)
            runtime.shutdown()
            launch("down", str(path), "--yes", home=home)
        finally:
            cloud.close()

    print(f"\nEC2 spot interruption on twins: a 60 s GPU task loses its node 30 s in (a notice {args.deadline:.0f} s "
          "ahead of that, where there is one; EC2 gives 120 s)")
    print(f"{'mode':<16} {'replacement registered, s from the loss':>40} {'task time redone s':>20} "
          f"{'result, s after the loss':>26}")
    for r in results:
        print(f"{r['mode']:<16} {r['replacement_vs_loss_s']:>40.2f} {r['redone_s']:>20.1f} "
              f"{r['result_after_loss_s']:>26.1f}")
    base = results[0]
    for r in results[1:]:
        print(f"  {r['mode']} vs status quo: replacement {r['replacement_vs_loss_s'] - base['replacement_vs_loss_s']:+.1f} s, "
              f"work redone {r['redone_s']:.1f} vs {base['redone_s']:.1f} s, result "
              f"{r['result_after_loss_s'] - base['result_after_loss_s']:+.1f} s")


if __name__ == "__main__":
    main()
