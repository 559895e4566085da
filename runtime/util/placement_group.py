"""`ray.util.placement_group`'s names (the groups themselves: runtime/placement_group.py)."""

from runtime.placement_group import (PlacementGroup, get_current_placement_group, placement_group,  # noqa: F401
                                     remove_placement_group)
