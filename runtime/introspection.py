"""What a program may ask of the cluster and of where it runs, with Ray's names: cluster_resources(),
available_resources(), nodes(), get_gpu_ids(), get_runtime_context(), is_initialized().

In a task or actor the answers come from its environment (set by the node's agent and worker for each
task); on a driver, from the head's ClusterState."""

from __future__ import annotations

import json
import os

from runtime import api


def is_initialized() -> bool:
    return api._conn is not None


def _alive_nodes():
    return [n for n in api._reconnecting(lambda: api._require().cluster_state()).nodes if n.state == "alive"]


def _summed(field: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for n in _alive_nodes():
        for k, v in getattr(n, field).amounts.items():
            out[k] = out.get(k, 0.0) + v
    return {k: v for k, v in out.items() if v > 0 or field == "total"}


def cluster_resources() -> dict[str, float]:
    """What the live nodes have, summed (CPU, GPU, memory, custom resources)."""
    return _summed("total")


def available_resources() -> dict[str, float]:
    """What the live nodes have free now, summed (a resource all in use is left out, as in Ray)."""
    return _summed("available")


def nodes() -> list[dict]:
    """One dict per node the head knows, live or dead, with Ray's keys."""
    out = []
    for n in api._reconnecting(lambda: api._require().cluster_state()).nodes:
        out.append({"NodeID": n.node_id, "Alive": n.state == "alive", "NodeManagerAddress": n.address,
                    "NodeName": n.address, "Resources": dict(n.total.amounts), "Labels": dict(n.labels),
                    "NodeType": n.node_type, "IsHead": n.is_head})
    return out


def _in_work() -> bool:
    """This process runs a task or an actor (a worker the node's agent started)."""
    return bool(os.environ.get("LAUNCH_ITEM_ID"))


def get_gpu_ids() -> list[int]:
    """The GPUs given to this task or actor (their CUDA_VISIBLE_DEVICES); none on a driver."""
    if not _in_work():
        return []
    ids = [i for i in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if i.strip()]
    return [int(i) if i.isdigit() else i for i in ids]


class RuntimeContext:
    """Where this code runs: the job, node, task and actor it belongs to, and what it was given."""

    def get_job_id(self) -> str:
        """The job this code runs in (a `launch submit`/`launch job`), else the driver's own id."""
        from runtime.actors import OWNER_ID

        return os.environ.get("LAUNCH_JOB_ID") or OWNER_ID

    def get_node_id(self) -> str | None:
        """The node it runs on; None on a driver outside the cluster."""
        return os.environ.get("LAUNCH_NODE_ID") or None

    def get_task_id(self) -> str | None:
        """The task or actor call running now; None on a driver."""
        return api.current_task.get() or None

    def get_actor_id(self) -> str | None:
        return os.environ.get("LAUNCH_ACTOR_ID") or None

    def get_assigned_resources(self) -> dict[str, float]:
        """The resources given to this task (to its actor, in an actor's method); none on a driver."""
        if not _in_work():
            return {}
        return json.loads(os.environ.get("LAUNCH_TASK_RESOURCES") or "{}")

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        return {"GPU": [str(i) for i in get_gpu_ids()]}

    @property
    def preempting(self) -> bool:
        """True once the node this runs on got its cloud's preemption notice (runtime.on_preemption)."""
        from runtime.preemption import notice

        return notice() is not None

    @property
    def was_current_actor_reconstructed(self) -> bool:
        """(in an actor) True when this instance restarts the actor after its process or node was lost
        (max_restarts): its __init__ may load what the last instance saved."""
        return bool(self.get_actor_id()) and int(os.environ.get("LAUNCH_ATTEMPT") or 0) > 0

    @property
    def namespace(self) -> str:
        return os.environ.get("LAUNCH_NAMESPACE", "")

    @property
    def current_actor(self):
        from runtime.actors import ActorHandle

        actor_id = self.get_actor_id()
        if actor_id is None:
            raise RuntimeError("current_actor: this code does not run in an actor")
        return ActorHandle(actor_id)

    def get(self) -> dict:
        return {"job_id": self.get_job_id(), "node_id": self.get_node_id(), "task_id": self.get_task_id(),
                "actor_id": self.get_actor_id(), "namespace": self.namespace}


def get_runtime_context() -> RuntimeContext:
    return RuntimeContext()
