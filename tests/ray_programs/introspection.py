"""What a program may ask: cluster_resources, available_resources, nodes, get_gpu_ids,
get_runtime_context, is_initialized."""
import ray

assert not ray.is_initialized()
ray.init()
assert ray.is_initialized()

total = ray.cluster_resources()
assert total["CPU"] >= 5 and total["GPU"] >= 2, total
free = ray.available_resources()
assert 0 < free["CPU"] <= total["CPU"], free

nodes = ray.nodes()
alive = [n for n in nodes if n["Alive"]]
assert len(alive) >= 3 and all("NodeID" in n and "Resources" in n for n in alive), nodes


@ray.remote(num_gpus=1)
def gpu_task():
    ctx = ray.get_runtime_context()
    return ray.get_gpu_ids(), ctx.get_node_id(), ctx.get_task_id(), ctx.get_assigned_resources()


gpus, node_id, task_id, assigned = ray.get(gpu_task.remote())
assert len(gpus) == 1 and isinstance(gpus[0], int), gpus
assert node_id in {n["NodeID"] for n in alive}
assert task_id
assert assigned.get("GPU") == 1, assigned


@ray.remote(num_cpus=2)
def cpu_task():
    return ray.get_gpu_ids(), ray.get_runtime_context().get_assigned_resources()


assert ray.get(cpu_task.remote()) == ([], {"CPU": 2.0})


@ray.remote
class Who:
    def ids(self):
        ctx = ray.get_runtime_context()
        return ctx.get_actor_id(), ctx.get_task_id()


w = Who.remote()
actor_id, call_id = ray.get(w.ids.remote())
assert actor_id and call_id and actor_id != call_id
assert ray.get_runtime_context().get_job_id()
assert ray.get_runtime_context().get_actor_id() is None  # the driver is no actor
ray.shutdown()
assert not ray.is_initialized()
print("OK")
