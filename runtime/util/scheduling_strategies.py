"""`ray.util.scheduling_strategies`'s names."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.placement_group import PlacementGroupSchedulingStrategy  # noqa: F401


@dataclass(frozen=True)
class NodeAffinitySchedulingStrategy:
    """Run a task or actor on one node (its id: `get_runtime_context().get_node_id()`, `nodes()`):
    only there (soft=False; a node not in the cluster fails it with TaskUnschedulableError), or there
    while it lives, else anywhere (soft=True)."""

    node_id: str
    soft: bool = False
