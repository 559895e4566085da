"""A spot preemption, with and without a notice, on AWS (moto) twins: the production path (a head whose
autoscaler calls EC2 with its instance's role, workers set up over SSH from the head, each twin with its
own metadata service giving EC2's spot notice). Run as root:

    .venv/bin/python bench/preemption.py [--deadline 20]

A long GPU task (300 steps of 0.1 s) runs on a spot worker when the worker is taken back, three ways:
- status quo: no notice; the instance is terminated, the node is seen lost by its heartbeats stopping
  (as before issue 32, and as on a cloud or node that gives no notice);
- notice: EC2's notice `--deadline` seconds ahead (EC2 gives 120 s), the instance terminated then; the
  task has no hook;
- notice + hook: the same, and the task saves its step in its preemption hook and exits.

For each: from the loss (status quo) or the notice to the replacement registered with the head; the
task time redone (the steps the lost attempt had run past the step the rerun started from, in
seconds); from the notice (or loss) to the task's result.
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

STEPS, STEP_S = 300, 0.1
AMI = "ami-12c6146b"


def launch(*args: str, home: Path) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "launcher", *args], env={**os.environ, "LAUNCH_HOME": str(home)},
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"launch {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return r


def tasks():
    """(store, work): a checkpoint actor on the head and the long task (tests/infra/cloud_work.py has the
    tests' own); the task writes its step to ~/progress on its node, so the step it reached is known."""
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
        progress = pathlib.Path.home() / "progress"
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
    import runtime
    from tests.infra import wait_for

    ref = work.remote(store, mode, mode == "notice + hook")
    busy = wait_for(lambda: [n for n in gpu_nodes()
                             if (cloud.twin(n) and (cloud.twin(n).root / "progress").exists())],
                    timeout=300, every=0.05, what="the task running")[0]
    wait_for(lambda: int((cloud.twin(busy).root / "progress").read_text() or 0) >= 100, timeout=120, every=0.05,
             what="100 steps done")
    t0 = time.time()
    if mode == "status quo":
        reached = int((cloud.twin(busy).root / "progress").read_text())
        cloud.ec2.terminate_instances(InstanceIds=[busy])
    else:
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0 + deadline_s))
        cloud.metadata[busy].set(spot_action={"action": "terminate", "time": at})
    replaced = wait_for(lambda: [n for n in gpu_nodes() if n != busy], timeout=300, every=0.05,
                        what="the replacement registered")
    registered_s = time.time() - t0
    if mode != "status quo":
        time.sleep(max(0.0, t0 + deadline_s - time.time()))  # the deadline: EC2 takes the instance
        reached = int((cloud.twin(busy).root / "progress").read_text())
        cloud.ec2.terminate_instances(InstanceIds=[busy])
    host, started = runtime.get(ref, timeout=600)
    done_s = time.time() - t0
    return {"mode": mode, "replacement_registered_s": round(registered_s, 2), "replacement": replaced[0],
            "redone_s": round(max(0, reached + 1 - started) * STEP_S, 1), "resumed_at_step": started,
            "result_after_s": round(done_s, 1), "ran_on": host}


def main() -> None:
    from tests.infra.moto_twins import LAPTOP_ENV, MotoTwins
    from tests.infra.twins import TwinNet, twins_unavailable

    parser = argparse.ArgumentParser()
    parser.add_argument("--deadline", type=float, default=20.0, help="seconds from the notice to the loss")
    args = parser.parse_args()
    reason = twins_unavailable()
    if reason:
        raise SystemExit(reason)
    os.makedirs("/run/sshd", exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-preempt-"))
    key = tmp / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    net = TwinNet(tmp / "net", Path(f"{key}.pub"))
    cloud = MotoTwins(net)
    home = net.laptop / "home"
    os.environ.update(LAUNCH_HOME=str(home), **LAPTOP_ENV)
    import yaml

    import runtime

    results = []
    laptop, k = net.laptop_for("aws", key)
    path = laptop / "preempt.yaml"
    path.write_text(yaml.safe_dump({
        "cluster_name": "bench-preempt", "max_workers": 3, "idle_timeout_minutes": 5,
        "provider": cloud.provider(keys=False, use_internal_ips=True, ssh_wait_s=60),
        "auth": {"ssh_user": "root", "ssh_private_key": str(k), "ssh_public_key": f"{k}.pub"},
        "autoscaler": {"tick_s": 0.5}, "runtime": {"heartbeat_interval_s": 0.3, "node_timeout_s": 3},
        "available_node_types": {
            "head": {"node_config": {"InstanceType": "m5.large", "ImageId": AMI}, "resources": {"CPU": 0}},
            "gpu-spot": {"node_config": {"InstanceType": "g4dn.xlarge", "ImageId": AMI}, "spot": True,
                         "cost_per_hour": 0.2, "max_workers": 3}},
        "head_node_type": "head"}))
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
        net.close()

    print(f"\nEC2 spot interruption on twins (notice {args.deadline:.0f} s ahead; EC2 gives 120 s), a 30 s task "
          "taken at step 100+:")
    print(f"{'mode':<16} {'to replacement registered s':>28} {'task time redone s':>20} {'to result s':>12}")
    for r in results:
        print(f"{r['mode']:<16} {r['replacement_registered_s']:>28.2f} {r['redone_s']:>20.1f} "
              f"{r['result_after_s']:>12.1f}")
    base = results[0]
    for r in results[1:]:
        print(f"  {r['mode']}: replacement {r['replacement_registered_s'] - base['replacement_registered_s']:+.1f} s "
              f"against the status quo's loss (counted from the notice, which comes {args.deadline:.0f} s "
              f"before the loss: the replacement is up {args.deadline - r['replacement_registered_s']:.1f} s "
              f"before it), work redone {r['redone_s']:.1f} s vs {base['redone_s']:.1f} s")


if __name__ == "__main__":
    main()
