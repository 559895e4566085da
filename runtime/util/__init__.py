"""`ray.util`'s names: ActorPool, Queue, placement groups, scheduling strategies.

    from runtime.util import ActorPool
    from runtime.util.queue import Queue, Empty, Full
    from runtime.util.placement_group import placement_group, remove_placement_group
    from runtime.util.scheduling_strategies import PlacementGroupSchedulingStrategy
"""

from runtime.util import scheduling_strategies  # noqa: F401
from runtime.util.actor_pool import ActorPool  # noqa: F401
from runtime.util.placement_group import (PlacementGroup, get_current_placement_group, placement_group,  # noqa: F401
                                          remove_placement_group)
