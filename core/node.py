"""A node as a provider lists it: what every layer above the providers reads."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.status import NodeStatus, parse_status
from core.tags import KIND_WORKER, TAG_KIND, TAG_STATUS, TAG_STATUS_SINCE


@dataclass(frozen=True)
class SlurmJob:
    """A node that is a Slurm allocation: the holder job that keeps it, and where the node's HOME is there."""

    job_id: str
    home: str  # absolute, on the compute node (made by the holder job)
    slurm_conf: str | None = None  # SLURM_CONF for the Slurm commands that reach it


@dataclass
class NodeInfo:
    id: str
    node_type: str
    state: str  # the provider's own instance state: pending | running | ...
    tags: dict[str, str] = field(default_factory=dict)
    internal_ip: str | None = None
    external_ip: str | None = None
    launched_at: float = 0.0
    spot: bool = False
    ssh_port: int = 22
    # a node that is a directory on this machine (local provider): its HOME; commands run there
    local_home: str | None = None
    # a node that is a Slurm allocation: commands reach it with `srun --jobid --overlap`
    slurm: SlurmJob | None = None
    # why the node is not running yet, as the provider tells it (a Slurm job's pending reason)
    detail: str = ""
    # (clouds) the offering it is: its machine type and zone, which a preemption makes the cloud avoid
    machine: str = ""
    zone: str = ""

    @property
    def kind(self) -> str:
        return self.tags.get(TAG_KIND, KIND_WORKER)

    @property
    def status(self) -> NodeStatus:
        return parse_status(self.tags.get(TAG_STATUS))

    @property
    def status_since(self) -> float:
        """When the node entered its current status (its launch time if never recorded)."""
        try:
            return float(self.tags[TAG_STATUS_SINCE])
        except (KeyError, ValueError):
            return self.launched_at
