"""The work the cloud end-to-end tests (AWS, GCP, Azure on VM twins) give a cluster, in one place.

The remote functions are made inside a function so cloudpickle ships them by value: the tests package
is not on the nodes."""

from __future__ import annotations

import os
from contextlib import contextmanager

from tests.infra import cli, cluster_status, wait_for, write_config


def gpu_and_cpu_tasks():
    """(infer, crunch): a T4 task that sleeps and says where it ran and which GPU it saw; a 4-CPU task
    that says where it ran (each twin's hostname is its instance's name or id)."""
    import runtime

    @runtime.remote(num_cpus=1, num_gpus=1, resources={"accelerator_type:T4": 1}, max_retries=2)
    def infer(sleep_s):
        import os
        import socket
        import time as t
        t.sleep(sleep_s)
        return socket.gethostname(), os.environ["CUDA_VISIBLE_DEVICES"]

    @runtime.remote(num_cpus=4)
    def crunch():
        import socket
        return socket.gethostname()

    return infer, crunch


def checkpointed_work(steps: int, step_s: float = 0.2, exit_when_saved: bool = False):
    """(store, work): a checkpoint store (an actor on the head, which outlives any worker) and a T4 task
    of `steps` steps that saves its progress there in its preemption hook and resumes from it when run
    again; with `exit_when_saved` its process then exits (the node has nothing left to run: it may go
    early). The task returns (where it ran, the step it started from, whether its node was preempting)."""
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

    @runtime.remote(num_cpus=1, num_gpus=1, resources={"accelerator_type:T4": 1}, max_retries=0)
    def work(store, key):
        import os
        import socket
        import time as t

        import runtime as rt

        start = rt.get(store.load.remote(key))
        progress = {"step": start}
        def save(notice):
            rt.get(store.save.remote(key, progress["step"]))
            if exit_when_saved:
                os._exit(0)

        rt.on_preemption(save)
        for step in range(start, steps):
            progress["step"] = step
            t.sleep(step_s)
        return socket.gethostname(), start, rt.get_runtime_context().preempting

    return store, work


def autoscaler_story(head_dir) -> str:
    """What the head's autoscaler did (its log without the per-tick records), for a failing assertion."""
    import json

    lines = (head_dir / "logs" / "autoscaler.log").read_text().splitlines()
    return "\n".join(line for line in lines if json.loads(line).get("event") not in ("tick", "plan"))


def busy_gpu_node(path, home) -> str:
    """The id of the node whose GPU a task holds, once one does."""
    return wait_for(lambda: [n["id"] for n in cluster_status(path, home)["nodes"]
                             if n["resources_total"].get("GPU") and n["resources_available"].get("GPU") == 0],
                    timeout=120, what="the task running")[0]


@contextmanager
def cloud_cluster(twin_net, ssh_lab, name: str, provider: dict, node_types: dict, down_args: tuple = ()):
    """A cluster config on the laptop (the user's key, which the twins accept; a small, fast autoscaler),
    LAUNCH_HOME pointed at it for runtime.init() in the test process; afterwards the runtime client
    closed and the cluster brought down. Yields (config path, LAUNCH_HOME)."""
    import runtime

    laptop, key = twin_net.laptop_for(name, ssh_lab.client_key)
    data = {
        "cluster_name": name,
        "max_workers": 3,
        "idle_timeout_minutes": 0.1,
        "provider": {**provider, "use_internal_ips": True, "ssh_wait_s": 60},
        "auth": {"ssh_user": "root", "ssh_private_key": str(key), "ssh_public_key": f"{key}.pub"},
        "autoscaler": {"tick_s": 0.5},
        "runtime": {"heartbeat_interval_s": 0.3, "node_timeout_s": 3},
        "available_node_types": node_types,
        "head_node_type": "head",
    }
    path = write_config(laptop / f"{name}.yaml", data)
    home = laptop / "home"
    old_home = os.environ.get("LAUNCH_HOME")
    os.environ["LAUNCH_HOME"] = str(home)
    try:
        yield path, home
    finally:
        runtime.shutdown()
        cli("down", str(path), "--yes", *down_args, home=home, timeout=180)
        if old_home is None:
            os.environ.pop("LAUNCH_HOME", None)
        else:
            os.environ["LAUNCH_HOME"] = old_home
