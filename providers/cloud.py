"""What the clouds (aws, gcp, azure) do alike, written once: each cloud module says only how to call its SDK.

- `CloudProvider.create`: stopped nodes of the type are started again first (cache_stopped_nodes), then
  new ones zone by zone, a zone out of capacity passing to the next. Fewer than asked is not an error, and
  nodes made are never dropped because a later zone failed (their ids are returned: nothing leaks).
- `fan_out`: one call per item, FAN_OUT at most at once, each outcome its value or the LaunchError it
  raised (some failing is not an error for the others).
- `for_each_node`: an action on every node at once; a node already gone is skipped; the first error raised.
- `CloudSection`: the provider keys every cloud takes (zones, SSH CIDR, the head's port, retries).
- a spot node the cloud took back and left stopped is terminated where `list` sees it.
- offerings (Karpenter's word): a node type of equivalent machine types is launched as the cheapest with
  capacity, each across the zones (`_offerings`); one out of capacity in a zone, or whose spot node got a
  preemption notice, is tried last there for OFFERING_UNAVAILABLE_S (`_out_of_capacity`, `avoid`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import Field

from core.config import ClusterConfig
from core.errors import CapacityError, LaunchError, NodeNotFound
from core.node import NodeInfo
from providers import prices
from providers.base import DEFAULT_HEAD_PORT, CommonSection, ProviderBase

FAN_OUT = 16  # cloud calls under way at once for one request


def equivalents_problems(config: ClusterConfig, key: Callable[[dict], Any], where: str, article: str,
                         what: str) -> list[str]:
    """A machine type given as equivalents is a list of names: a problem per node type, naming the field."""
    problems = []
    for name, nt in config.available_node_types.items():
        value = key(nt.node_config)
        field = f"available_node_types.{name}.node_config.{where}"
        if isinstance(value, list) and (not value or not all(isinstance(m, str) and m for m in value)):
            problems.append(f"{field}: equivalent {what}s are a list of one or more {what} names")
        elif value is not None and not isinstance(value, (str, list)):
            problems.append(f"{field}: {article} {what} name, or a list of equivalent ones")
    return problems


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

    def _offerings(self, machines: list[str], places: list[dict], region: str | None, spot: bool) -> list[dict]:
        """`_zones` of a cloud with equivalent machine types: for each machine type (cheapest first, by the
        catalog in `region`, spot for a spot type; unknown ones last, in the user's order), each place
        ({"zone": name or None, ...the cloud's own keys}); an offering out of capacity lately comes last."""
        priced = {m: prices.machine_quote(self.spec.provider_kind, m, region, spot) for m in machines}
        machines = sorted(machines, key=lambda m: priced[m][0] if priced[m] else float("inf"))  # (stable)
        offers = [{**p, "machine": m, "label": f"{m} in {p['zone'] or 'any zone'}" if len(machines) > 1
                   else (p["zone"] or "any")} for m in machines for p in places]
        now = time.monotonic()
        return sorted(offers, key=lambda o: self._unavailable.get((o["machine"], o["zone"]), 0.0) > now)

    @property
    def _unavailable(self) -> dict[tuple[str, str | None], float]:
        """(machine type, zone) -> until when it is tried last."""
        return self.__dict__.setdefault("_unavailable_until", {})

    def _zone_name(self, zone) -> str:
        return zone["label"] if isinstance(zone, dict) else str(zone) if zone else "any"

    def _out_of_capacity(self, zone) -> None:
        """`zone` (an offering of `_offerings`) had no room just now: tried last there for a while."""
        if isinstance(zone, dict):
            self._unavailable[(zone["machine"], zone["zone"])] = time.monotonic() + OFFERING_UNAVAILABLE_S

    def avoid(self, node: NodeInfo) -> None:
        if node.machine:  # (a node launched where the cloud chose the zone has none: "any", never matched)
            self._unavailable[(node.machine, node.zone or None)] = time.monotonic() + OFFERING_UNAVAILABLE_S

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
