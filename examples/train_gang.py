"""A training gang: one bundle per node, all reserved at once, a rank in each. After `launch up`:

    .venv/bin/python examples/train_gang.py [NODES] [GPUS_PER_NODE] [CPUS_PER_NODE]   # default 2 4 4
or as a job: `launch submit cluster.yaml examples/train_gang.py -- 2 1 1`. With the autoscaler on, a
gang that does not fit the cluster launches the nodes it needs, all of them or none.
"""

import os
import sys

import runtime
from runtime.placement_group import PlacementGroupSchedulingStrategy, placement_group, remove_placement_group

nodes, gpus, cpus = (int(a) for a in (sys.argv[1:] + ["2", "4", "4"][len(sys.argv[1:]):])[:3])
runtime.init()

bundle = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
pg = placement_group([bundle] * nodes, strategy="STRICT_SPREAD")
runtime.get(pg.ready(), timeout=900)
print(f"reserved {nodes} x {bundle}")


@runtime.remote
def train(rank, world):
    return rank, world, os.environ["LAUNCH_NODE_ID"], os.environ["CUDA_VISIBLE_DEVICES"]


ranks = [train.options(num_cpus=cpus, num_gpus=gpus,
                       scheduling_strategy=PlacementGroupSchedulingStrategy(pg, i)).remote(i, nodes)
         for i in range(nodes)]
for rank, world, node, cuda in runtime.get(ranks):
    print(f"rank {rank}/{world} on node {node}, CUDA_VISIBLE_DEVICES={cuda!r}")
remove_placement_group(pg)
