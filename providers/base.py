"""The interface every provider implements, the tags that carry cluster state, and typed errors.

A provider creates, lists, tags and terminates instances and hands out a command runner for one. It
knows nothing about autoscaling. All durable state lives in instance tags, so the launcher and the
autoscaler can rebuild everything from `list_nodes`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from launcher.errors import ConfigError, LaunchError

if TYPE_CHECKING:
    from launcher.command_runner import CommandRunner
    from launcher.config import ClusterConfig

TAG_CLUSTER = "launch-cluster"
TAG_KIND = "launch-kind"  # head | worker
TAG_NODE_TYPE = "launch-node-type"
TAG_STATUS = "launch-status"
TAG_LAUNCH_HASH = "launch-launch-hash"
TAG_RUNTIME_HASH = "launch-runtime-hash"
TAG_REQUEST_ID = "launch-request-id"

KIND_HEAD = "head"
KIND_WORKER = "worker"


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

    @property
    def kind(self) -> str:
        return self.tags.get(TAG_KIND, KIND_WORKER)

    @property
    def status(self) -> str:
        return self.tags.get(TAG_STATUS, "pending")


class ProviderError(LaunchError):
    """A provider call failed in a way the caller may handle."""


class CapacityError(ProviderError):
    """The cloud has no capacity for this node type (in this zone): back off, try another type."""

    def __init__(self, node_type: str, zone: str | None = None, detail: str = ""):
        self.node_type, self.zone = node_type, zone
        where = f" in {zone}" if zone else ""
        super().__init__(f"no capacity for node type {node_type!r}{where}" + (f": {detail}" if detail else ""))


class QuotaError(ProviderError):
    def __init__(self, node_type: str, detail: str = ""):
        self.node_type = node_type
        super().__init__(f"quota exceeded for node type {node_type!r}" + (f": {detail}" if detail else ""))


class TransientError(ProviderError):
    """Throttling or a passing fault: retry with backoff."""


class NodeNotFound(ProviderError):
    def __init__(self, node_id: str):
        self.node_id = node_id
        super().__init__(f"node {node_id!r} not found")


__all__ = [
    "CapacityError",
    "ConfigError",
    "NodeInfo",
    "NodeNotFound",
    "NodeProvider",
    "ProviderError",
    "QuotaError",
    "TransientError",
]


class NodeProvider(Protocol):
    """One instance per cluster: `provider_cls(cfg, cluster_dir)`."""

    def bootstrap_config(self, cfg: ClusterConfig) -> ClusterConfig:
        """Fill in what the provider needs (keys, security groups, subnets); may create cloud objects."""

    def create_nodes(self, node_type: str, count: int, tags: dict[str, str]) -> list[NodeInfo]:
        """Create up to `count` nodes carrying `tags` from birth. Fewer than asked is not an error."""

    def terminate_nodes(self, node_ids: list[str]) -> None:
        """Idempotent: unknown or already-gone ids are ignored."""

    def list_nodes(self, tag_filters: dict[str, str]) -> list[NodeInfo]:
        """Non-terminated nodes whose tags include every filter pair."""

    def set_tags(self, node_id: str, tags: dict[str, str]) -> None: ...

    def command_runner(self, node: NodeInfo) -> CommandRunner: ...

    # Where the runtime listens: the interface the head binds and the port (0: any free port).
    head_bind_host: str
    head_port: int
