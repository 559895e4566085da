"""The interface every provider implements (DESIGN.md, "Provider interface (v2)").

A provider module has:
- `Section`: the pydantic model of its `provider:` keys (a misspelt key is a config error);
- `bootstrap(config, state_dir) -> Bootstrapped`: create or reuse keys, networks, roles; a pure result
  that the lifecycle stores in the ClusterSpec;
- `Provider(spec)`: built from the spec alone, so any provider object (exec on the laptop, the
  autoscaler on the head) behaves the same as the one `up` used.

A provider creates, lists, tags and terminates instances. It knows nothing of autoscaling and hands out
no command runners (transport builds them from a NodeInfo and the auth settings). All durable node
state is in instance tags, so everything can be rebuilt from `list`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field

from core.config import ProviderConfig
from core.errors import (  # noqa: F401  (re-exported: what providers raise)
    CapacityError, ConfigError, InvalidRequest, NodeNotFound, PermissionDenied, ProviderError, QuotaError,
    TransientError,
)
from core.spec import ClusterSpec
from core.node import NodeInfo  # noqa: F401  (re-exported)


DEFAULT_HEAD_PORT = 6380  # where a head's runtime service listens unless its provider section says


class CommonSection(BaseModel):
    """The provider keys every provider takes; each provider's `Section` adds its own."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    type: str
    use_internal_ips: bool = False
    cache_stopped_nodes: bool | None = None
    ssh_wait_s: float = Field(default=300.0, gt=0)  # how long a new node may take to answer SSH
    ssh_connect_timeout_s: float = Field(default=10.0, gt=0)

    def node_wait_s(self) -> float:
        """How long a new node may take to accept commands (a queue-based provider adds its queue wait)."""
        return self.ssh_wait_s

    def warnings(self) -> list[str]:
        """What the section asks for that this provider accepts but does not do (said once, at load)."""
        return []

    @classmethod
    def of(cls, provider: ProviderConfig):
        """The config's provider section as this typed model (keys left unset take their defaults)."""
        return cls.model_validate(provider.model_dump(exclude_none=True))


def zone_list(raw: str | list[str] | None) -> list[str]:
    """Ray's `availability_zone`: one zone, zones comma-separated, or a list; in order of preference."""
    items = raw if isinstance(raw, list) else (raw or "").split(",")
    return [str(z).strip() for z in items if z is not None and str(z).strip()]


@dataclass(frozen=True)
class ProviderFacts:
    """What the rest of launch knows of a provider without building one (no SDK is imported): each provider
    module's FACTS."""

    # how the price catalog finds a node type: the machine types its node_config names (in the user's
    # order: one, or equivalents), whether it asks for spot capacity, the provider section's region key
    machines_of: Callable[[dict], list[str]] = lambda node_config: []
    spot_of: Callable[[dict], bool] = lambda node_config: False
    region_key: str = "region"
    # whose preemption notices a spot node's agent watches (runtime/notices.py); "": the cloud gives none
    notices: str = ""
    notices_on_every_node: bool = False  # (Slurm: every allocation ends, at its time limit or preempted)
    # what the head's control plane imports to call the cloud: shipped with the head's runtime
    head_sdk: tuple[str, ...] = ()
    head_sdk_optional: frozenset[str] = frozenset()  # imported by those SDKs where present
    # which files of those SDKs (a path's parts under site-packages) the head never imports: left out of
    # its bundle (most of an SDK's size can be data for services it never calls)
    head_sdk_unused: Callable[[list[str]], bool] = lambda parts: False
    # bootstrap creates and looks up nothing outside this machine: run again where a cluster's spec is lost
    offline_bootstrap: bool = False


@dataclass(frozen=True)
class Capabilities:
    spot: bool = False
    zones: bool = False  # create falls back across availability zones
    stop_start: bool = False  # instances can be stopped and started again
    # a new instance may get an address a former one had (clouds): host keys are pinned per instance,
    # not per address, so a new machine at a reused IP is not taken for a man in the middle
    reuses_ips: bool = False
    cleanup: bool = False  # bootstrap makes things for this cluster alone that `down` removes (cleanup())
    live_spot_prices: bool = False  # the cloud says its current spot prices (spot_prices())
    # (sim) workers boot ready, with nothing to set up or copy: their agents register by themselves
    self_starting: bool = False


@dataclass
class Bootstrapped:
    """What bootstrap resolved: the provider's own state, and the SSH identity nodes accept."""

    state: dict[str, Any] = field(default_factory=dict)
    ssh_user: str | None = None
    ssh_private_key: str | None = None
    notes: list[str] = field(default_factory=list)  # what it chose that the user did not say, one line each


class ProviderBase:
    """What every provider is, and what some can do: each optional ability has its flag in `capabilities`
    and a default here that does nothing, so the lifecycle reads the flags and never probes for methods.
    A provider module's `Provider` subclasses this and is built from the cluster's spec alone."""

    capabilities: Capabilities
    # Where the head's runtime service listens: the interface it binds and the port (0: any free one).
    head_bind_host: str = ""
    head_port: int = 0
    # (capabilities.stop_start) Ray's key: retire nodes by stopping them, create by starting stopped ones
    cache_stopped_nodes: bool = False
    # (capabilities.live_spot_prices) how often the head asks for them (a market: often; a list: daily)
    spot_prices_every_s: float = 600.0

    def create(self, node_type: str, count: int, tags: dict[str, str]) -> list[NodeInfo]:
        """Create up to `count` nodes carrying `tags` from birth. Fewer than asked is not an error."""
        raise NotImplementedError

    def list(self, tag_filters: dict[str, str]) -> list[NodeInfo]:
        """Non-terminated nodes whose tags include every filter pair."""
        raise NotImplementedError

    def terminate(self, node_ids: list[str]) -> None:
        """Idempotent and batched: unknown or already-gone ids are ignored."""
        raise NotImplementedError

    def set_tags(self, node_id: str, tags: dict[str, str]) -> None:
        raise NotImplementedError

    def node_types(self) -> dict[str, dict[str, float]]:
        """Each node type's resources from the provider's catalog ({} where it cannot tell)."""
        return {}

    # --- (capabilities.stop_start) ---

    def stop(self, node_ids: list[str]) -> None:
        """Stop, keeping the disk; `list` no longer shows them."""
        raise NotImplementedError(f"{type(self).__module__} cannot stop nodes")

    def stopped(self, tag_filters: dict[str, str]) -> list[NodeInfo]:
        """The stopped ones, for `down`."""
        return []

    # --- (capabilities.cleanup) ---

    def cleanup(self, purge: bool = False) -> list[str]:
        """(`down`, once no node is left) Remove what bootstrap made for this cluster alone (never what it
        found, or what other clusters share); `purge` (down --purge) also what it made and keeps by
        default. Lines saying what it kept or removed."""
        return []

    # --- (capabilities.self_starting) ---

    def wait_booted(self, node: NodeInfo) -> None:
        """Returns once the node has booted (its agent then registers by itself)."""

    # --- (capabilities.live_spot_prices) ---

    def spot_prices(self, machines: list[str]) -> dict[str, float]:
        """The current spot price of each machine type, $/h, in the cluster's zones (the cheapest of them)."""
        return {}

    def avoid(self, node: NodeInfo) -> None:
        """(a spot node its cloud is taking back) Launch elsewhere for a while: its offering (machine
        type and zone) is short of spot capacity."""

    # --- any provider ---

    def container_options(self, is_head: bool) -> list[str]:
        """`docker run` options a node of this provider needs where it runs in a container (Ray's docker
        section), e.g. state the provider keeps on the host."""
        return []

    def close(self) -> None:
        """Let go of what the provider holds (connections)."""


