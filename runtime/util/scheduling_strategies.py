"""`ray.util.scheduling_strategies`'s names."""

from runtime.placement_group import PlacementGroupSchedulingStrategy  # noqa: F401
