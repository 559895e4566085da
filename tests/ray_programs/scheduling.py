"""Scheduling strategies: "SPREAD" over the nodes, NodeAffinitySchedulingStrategy hard and soft."""
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

ray.init()


@ray.remote(num_cpus=0.1)
def where(_):
    import time
    time.sleep(0.5)
    return ray.get_runtime_context().get_node_id()


nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
spread = set(ray.get([where.options(scheduling_strategy="SPREAD").remote(i) for i in range(len(nodes))]))
assert len(spread) >= 2, spread  # packed work would all land on one node

for node_id in nodes:
    pinned = where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False))
    assert set(ray.get([pinned.remote(i) for i in range(3)])) == {node_id}

no_such_node = "ab" * 28  # a node id as Ray writes them (hex), of no node of the cluster
gone = NodeAffinitySchedulingStrategy(node_id=no_such_node, soft=False)
try:
    ray.get(where.options(scheduling_strategy=gone).remote(0), timeout=30)
except ray.exceptions.TaskUnschedulableError:
    pass
else:
    raise AssertionError("hard affinity to a node not in the cluster must fail")
soft = NodeAffinitySchedulingStrategy(node_id=no_such_node, soft=True)
assert ray.get(where.options(scheduling_strategy=soft).remote(0)) in nodes


@ray.remote(num_cpus=0)
class Pinned:
    def node(self):
        return ray.get_runtime_context().get_node_id()


target = sorted(nodes)[0]
actor = Pinned.options(scheduling_strategy=NodeAffinitySchedulingStrategy(target, soft=False)).remote()
assert ray.get(actor.node.remote()) == target
print("OK")
