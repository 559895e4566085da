"""What the clouds (aws, gcp, azure) do alike, written once: each cloud module says only how to call its SDK.

- `CloudProvider.create`: stopped nodes of the type are started again first (cache_stopped_nodes), then
  new ones zone by zone, a zone out of capacity passing to the next. Fewer than asked is not an error, and
  nodes made are never dropped because a later zone failed (their ids are returned: nothing leaks).
- `fan_out`: one call per item, FAN_OUT at most at once, each outcome its value or the LaunchError it
  raised (some failing is not an error for the others).
- `for_each_node`: an action on every node at once; a node already gone is skipped; the first error raised.
- `CloudSection`: the provider keys every cloud takes (zones, SSH CIDR, the head's port, retries).
- a spot node the cloud took back and left stopped is terminated where `list` sees it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import Field

from core.errors import CapacityError, LaunchError, NodeNotFound
from core.node import NodeInfo
from providers.base import DEFAULT_HEAD_PORT, CommonSection, ProviderBase

FAN_OUT = 16  # cloud calls under way at once for one request


class CloudSection(CommonSection):
    """The provider keys every cloud takes (each cloud's Section adds its own)."""

    availability_zone: str | list[str] | None = None  # a list or comma-separated, in order of preference
    ssh_cidr: str = "0.0.0.0/0"  # who may reach the nodes' SSH port
    head_port: int = Field(default=DEFAULT_HEAD_PORT, ge=0, le=65535)
    head_bind_host: str = ""  # "": loopback and the private IP (the runtime is reached through SSH)
    retry_attempts: int = Field(default=8, ge=1, le=20)  # per call: throttling, 5xx, connection errors


def fan_out(fn: Callable[[Any], Any], items: Iterable) -> list:
    items = list(items)
    if not items:
        return []

    def outcome(item):
        try:
            return fn(item)
        except LaunchError as e:
            return e

    with ThreadPoolExecutor(max_workers=min(len(items), FAN_OUT)) as pool:
        return list(pool.map(outcome, items))


def made_or_raise(outcomes: list) -> list[NodeInfo]:
    """The nodes a fan-out made; if it made none, the first error (a capacity error first: the next zone)."""
    made = [x for x in outcomes if isinstance(x, NodeInfo)]
    errors = [x for x in outcomes if isinstance(x, LaunchError)]
    if errors and not made:
        raise next((e for e in errors if isinstance(e, CapacityError)), errors[0])
    return made


def for_each_node(node_ids: list[str], action: Callable[[str], None]) -> None:
    def one(node_id: str) -> None:
        try:
            action(node_id)
        except NodeNotFound:
            pass

    errors = [x for x in fan_out(one, node_ids) if isinstance(x, LaunchError)]
    if errors:
        raise errors[0]


OFFERING_UNAVAILABLE_S = 180.0  # a machine type out of capacity in a zone is tried last this long (Karpenter's 3 min)


class CloudProvider(ProviderBase):
    """A cloud's provider: `create` is written here; the cloud gives `_launch` (new nodes in one zone),
    `_zones` (where to try, in order) and, if it caches stopped nodes, `_start_stopped`."""

    def create(self, node_type: str, count: int, tags: dict[str, str]) -> list[NodeInfo]:
        made = self._start_stopped(node_type, count, tags) if self.cache_stopped_nodes else []
        zones = self._zones(node_type)
        last: CapacityError | None = None
        for zone in zones:
            if len(made) >= count:
                break
            try:
                made += self._launch(node_type, zone, count - len(made), tags)
            except CapacityError as e:  # this zone is out: the next one
                last = e
                self._out_of_capacity(zone)
            except LaunchError:
                if made:
                    return made
                raise
        if not made and last is not None:
            if len(zones) < 2:
                raise last
            names = ", ".join(self._zone_name(z) for z in zones)
            raise CapacityError(node_type, None, f"every zone is out ({names}): {last}")
        return made

    def _zones(self, node_type: str) -> list:
        """Where `create` tries, in order (a cloud's own placement: a zone, a subnet; None: the cloud picks)."""
        return [None]

    def _zone_name(self, zone) -> str:
        return str(zone) if zone else "any"

    def _out_of_capacity(self, zone) -> None:
        """(a cloud that remembers) `zone` had no room just now."""

    def _launch(self, node_type: str, zone, count: int, tags: dict[str, str]) -> list[NodeInfo]:
        """Up to `count` new nodes in `zone` (fewer is not an error); CapacityError if it has no room."""
        raise NotImplementedError

    def _start_stopped(self, node_type: str, count: int, tags: dict[str, str]) -> list[NodeInfo]:
        """(cache_stopped_nodes) Up to `count` stopped nodes of this type and launch hash, started again."""
        return []

    def _live_sweeping_preempted(self, nodes: list[NodeInfo]) -> list[NodeInfo]:
        """The live ones of `nodes`; a spot node the cloud took back and left stopped (deallocated) is not
        coming back as capacity and its disk costs: it is terminated here, where `list` sees it."""
        preempted = [n.id for n in nodes if n.spot and n.state in ("stopped", "stopping")]
        if preempted:
            self.terminate(preempted)
        return [n for n in nodes if n.state in ("pending", "running")]
