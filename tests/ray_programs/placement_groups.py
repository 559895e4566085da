"""Placement groups: reserve bundles, run tasks and actors in them, find the group from inside."""
import ray
from ray.util.placement_group import get_current_placement_group, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

ray.init()

pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="SPREAD")
ray.get(pg.ready(), timeout=60)
assert pg.wait(timeout_seconds=10)


@ray.remote(num_cpus=1)
def inside():
    current = get_current_placement_group()
    return current is not None and current.id == pg_id


pg_id = pg.id
strategy = PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=1)
assert ray.get(inside.options(scheduling_strategy=strategy).remote())


@ray.remote(num_cpus=1)
def outside():
    return get_current_placement_group() is None


assert ray.get(outside.remote())


@ray.remote(num_cpus=1)
class InGroup:
    def where(self):
        return ray.get_runtime_context().get_node_id()


actor = InGroup.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0)).remote()
assert ray.get(actor.where.remote())
remove_placement_group(pg)
print("OK")
