"""Placement groups: resources reserved on several nodes at once, all or nothing (Ray's API).

    pg = placement_group([{"CPU": 1, "GPU": 1}] * 8, strategy="STRICT_SPREAD")
    runtime.get(pg.ready())                       # once every bundle is reserved
    train.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=3)).remote()
    remove_placement_group(pg)                     # the reservation ends; work in it is cancelled

Strategies: PACK (as few nodes as possible), SPREAD (as many as possible), STRICT_PACK (one node),
STRICT_SPREAD (one node per bundle). A group that does not fit the cluster now is demand: the autoscaler
launches a set of nodes that holds all of it, or none.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime import api
from runtime.api import ObjectRef

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass(frozen=True)
class PlacementGroup:
    id: str
    bundle_specs: list[dict[str, float]] = field(default_factory=list)
    strategy: str = "PACK"

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    def ready(self) -> ObjectRef:
        """A future that resolves (to this group) once every bundle is reserved."""
        group = self
        return api.RemoteFunction(lambda: group, num_cpus=0, max_retries=0, name="placement_group.ready",
                                  placement_group=self, placement_group_bundle_index=0).remote()

    def wait(self, timeout_seconds: float = 30) -> bool:
        """Whether the group is placed within the timeout."""
        ready, _ = api.wait([self.ready()], timeout=timeout_seconds)
        return bool(ready)


@dataclass(frozen=True)
class PlacementGroupSchedulingStrategy:
    """Run a task or actor in a bundle of a group (index -1: any bundle with room)."""

    placement_group: PlacementGroup
    placement_group_bundle_index: int = -1
    placement_group_capture_child_tasks: bool = False


def placement_group(bundles: list[dict[str, float]], strategy: str = "PACK", name: str = "",
                    lifetime: str | None = None) -> PlacementGroup:
    """Reserve `bundles` (each a dict of resources) by `strategy`; returns at once (see `ready()`)."""
    from runtime.work import group_problem

    if not isinstance(bundles, (list, tuple)) or not all(isinstance(b, dict) for b in bundles):
        raise ValueError("bundles must be a list of dicts of resources, e.g. [{'CPU': 1}, {'GPU': 1}]")
    specs = []
    for i, b in enumerate(bundles):
        bad = next((k for k, v in b.items() if not isinstance(v, (int, float)) or isinstance(v, bool)), None)
        if bad is not None:
            raise ValueError(f"placement_group: bundle {i}: resource {bad}: must be a number (got {b[bad]!r})")
        specs.append({k: float(v) for k, v in b.items()})
    problem = group_problem(specs, strategy)
    if problem:
        raise ValueError(f"placement_group: {problem}")
    specs = [{k: v for k, v in b.items() if v > 0} for b in specs]  # a zero asks for nothing
    from runtime.proto import head_pb2 as pb

    pg_id = api._submit("pg", name or "placement_group", {}, b"", [], 0, "pg",
                        bundles=[pb.Resources(amounts=b) for b in specs], strategy=strategy)
    return PlacementGroup(pg_id, specs, strategy)


def get_current_placement_group() -> PlacementGroup | None:
    """The group this task or actor runs in (None: in none, or on a driver). Its bundles are not known
    here: work submitted into it is checked against them by the head."""
    import os

    pg_id = os.environ.get("LAUNCH_PLACEMENT_GROUP", "") if os.environ.get("LAUNCH_ITEM_ID") else ""
    return PlacementGroup(pg_id, [], "") if pg_id else None


def remove_placement_group(pg: PlacementGroup) -> None:
    """End the reservation: tasks and actors in the group are cancelled or killed."""
    api._require().cancel(pg.id)
