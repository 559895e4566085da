"""Actors and placement groups through the client API, on one real local cluster shared by this module.

Nodes: head {CPU 1}; two `cpu` {CPU 2}; gpu {CPU 1, GPU 2 (declared)}; spare {CPU 1, spare 1} (only the
node-death test uses it, and kills it). The autoscaler is off: placement is judged on these nodes alone.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

import runtime
from launcher.cluster import Cluster
from lifecycle.config import load_config
from providers.local import marked_pids
from runtime.exceptions import ActorDiedError
from runtime.placement_group import PlacementGroupSchedulingStrategy, placement_group, remove_placement_group
from runtime.proto import head_pb2 as pb
from tests.infra import RunningCluster, cli, local_cluster, wait_for


@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("actors")
    data = local_cluster("actors", runtime={"heartbeat_interval_s": 0.2, "node_timeout_s": 1.5, "owner_timeout_s": 3},
                         autoscaler={"enabled": False}, max_workers=5)
    data["available_node_types"] = {
        "head": {"resources": {"CPU": 1}, "max_workers": 0},
        "cpu": {"resources": {"CPU": 2}, "min_workers": 2, "max_workers": 2},
        "gpu": {"resources": {"CPU": 1, "GPU": 2}, "min_workers": 1, "max_workers": 1},
        "spare": {"resources": {"CPU": 1, "spare": 1}, "min_workers": 1, "max_workers": 1},
    }
    c = RunningCluster(tmp, data)
    yield {"path": c.path, "home": c.home, "types": c.node_types(), "address": c.address, "token": c.token}
    c.down()


def _state(rt) -> pb.ClusterState:
    from runtime.client import HeadClient

    runtime.wait([], num_returns=0, timeout=0)  # every submission so far has reached the head
    with HeadClient(rt["address"], rt["token"]) as c:
        return c.cluster_state()


def _available(rt) -> dict[str, dict[str, float]]:
    return {n.node_id: dict(n.available.amounts) for n in _state(rt).nodes if n.state == "alive"}


@runtime.remote
class Counter:
    def __init__(self, start: int = 0):
        self.n = start
        self.pid = os.getpid()
        self.restarted = runtime.get_runtime_context().was_current_actor_reconstructed

    def was_restarted(self) -> bool:
        return self.restarted

    def incr(self, by: int = 1) -> int:
        self.n += by
        return self.n

    def where(self) -> tuple[str, str, int]:
        return os.environ["LAUNCH_NODE_ID"], os.environ["CUDA_VISIBLE_DEVICES"], self.pid

    def slow(self, seconds: float, started: str = "") -> int:
        if started:
            open(started, "w").close()
        time.sleep(seconds)
        return self.n

    def fail(self):
        raise KeyError("no such thing")

    def die(self):
        os._exit(3)


@runtime.remote(num_cpus=0)
def node_of():
    return os.environ["LAUNCH_NODE_ID"]


# --- actors ------------------------------------------------------------------------------------------

def test_calls_run_in_order_and_keep_state(rt):
    c = Counter.remote(10)
    refs = [c.incr.remote() for _ in range(200)]
    assert runtime.get(refs, timeout=60) == list(range(11, 211))
    assert runtime.get(c.incr.remote(5), timeout=30) == 215
    runtime.kill(c)


def test_an_actor_holds_its_resources_until_killed(rt, tmp_path):
    before = _available(rt)
    c = Counter.options(num_cpus=2).remote()
    node, _, _ = runtime.get(c.where.remote(), timeout=30)
    assert rt["types"][node] == "cpu" and _available(rt)[node]["CPU"] == before[node]["CPU"] - 2
    started = tmp_path / "started"
    pending = c.slow.remote(30, str(started))
    queued = c.incr.remote()
    wait_for(started.exists, timeout=20, every=0.05, what="the call started")  # a kill stops a call mid-run, not only queued ones
    runtime.kill(c)
    for ref in (pending, queued):
        with pytest.raises(ActorDiedError, match="killed"):
            runtime.get(ref, timeout=30)
    wait_for(lambda: _available(rt)[node]["CPU"] == before[node]["CPU"], timeout=20, every=0.05,
             what="the killed actor's CPUs free again")
    with pytest.raises(ActorDiedError, match="dead"):
        runtime.get(c.incr.remote(), timeout=30)


def test_a_method_exception_is_the_callers_and_the_actor_lives_on(rt):
    c = Counter.remote()
    with pytest.raises(KeyError, match="no such thing") as e:
        runtime.get(c.fail.remote(), timeout=30)
    # its traceback names the class's file and shows the line (cloudpickle 3.1.3+ would name neither)
    assert f'File "{__file__}"' in e.value.remote_traceback and 'raise KeyError("no such thing")' in e.value.remote_traceback
    with pytest.raises(AttributeError, match="nope"):
        runtime.get(c.nope.remote(), timeout=30)
    assert runtime.get(c.incr.remote(), timeout=30) == 1
    runtime.kill(c)


def test_a_constructor_that_raises_fails_every_call(rt):
    @runtime.remote
    class Broken:
        def __init__(self):
            raise ValueError("bad config")

        def ping(self):
            return "pong"

    b = Broken.remote()
    with pytest.raises(ActorDiedError, match="ValueError: bad config"):
        runtime.get(b.ping.remote(), timeout=30)
    with pytest.raises(ActorDiedError, match="ValueError: bad config"):  # a call made once it is dead, too
        runtime.get(b.ping.remote(), timeout=30)


def test_handles_pass_to_tasks_and_other_actors(rt):
    c = Counter.remote()

    @runtime.remote(num_cpus=0)
    def bump(counter, times):
        return runtime.get([counter.incr.remote() for _ in range(times)])[-1]

    @runtime.remote
    class Proxy:
        def __init__(self, counter):
            self.counter = counter

        def bump(self):
            return runtime.get(self.counter.incr.remote(100))

    runtime.get([bump.remote(c, 5) for _ in range(3)], timeout=60)
    p = Proxy.remote(c)
    assert runtime.get(p.bump.remote(), timeout=30) == 115
    runtime.kill(p)
    runtime.kill(c)


def test_named_actors_are_found_by_name_and_names_are_unique(rt):
    c = Counter.options(name="global-counter").remote(7)
    found = runtime.get_actor("global-counter")
    assert runtime.get(found.incr.remote(), timeout=30) == 8
    with pytest.raises(ValueError, match="global-counter"):
        Counter.options(name="global-counter").remote()
    runtime.kill(found)
    wait_for(lambda: _raises(lambda: runtime.get_actor("global-counter"), ValueError), timeout=20, every=0.05,
             what="the named actor gone")
    again = Counter.options(name="global-counter").remote(1)  # the name is free once the actor is gone
    assert runtime.get(again.incr.remote(), timeout=30) == 2
    runtime.kill(again)
    assert c == found


def _raises(fn, exc) -> bool:
    try:
        fn()
    except exc:
        return True
    return False


def test_gpu_actors_get_gpus_of_their_own(rt):
    a = Counter.options(num_gpus=1).remote()
    b = Counter.options(num_gpus=1).remote()
    (node_a, gpus_a, _), (node_b, gpus_b, _) = runtime.get([a.where.remote(), b.where.remote()], timeout=30)
    assert rt["types"][node_a] == rt["types"][node_b] == "gpu"
    assert {gpus_a, gpus_b} == {"0", "1"}
    plain = Counter.remote()
    assert runtime.get(plain.where.remote(), timeout=30)[1] == ""  # no GPUs asked for: none visible
    for h in (a, b, plain):
        runtime.kill(h)


def test_an_actor_whose_process_dies_is_restarted_and_its_call_retried(rt):
    c = Counter.options(max_restarts=1, max_task_retries=0).remote(5)
    _, _, pid = runtime.get(c.where.remote(), timeout=30)
    assert runtime.get(c.was_restarted.remote(), timeout=30) is False
    with pytest.raises(ActorDiedError, match="died"):
        runtime.get(c.die.remote(), timeout=30)  # its process exits mid-call: no retries for that call
    _, _, pid2 = runtime.get(c.where.remote(), timeout=30)
    assert pid2 != pid
    assert runtime.get(c.incr.remote(), timeout=30) == 6  # made again with its constructor's arguments
    assert runtime.get(c.was_restarted.remote(), timeout=30) is True  # and its __init__ knew it (Ray's name)
    c.die.remote()
    with pytest.raises(ActorDiedError):  # out of restarts: dead for good
        runtime.get(c.incr.remote(), timeout=30)


def test_an_actor_on_a_dead_node_restarts_elsewhere_and_no_call_is_lost(rt, monkeypatch):
    c = Counter.options(resources={"spare": 1}, num_cpus=0, max_restarts=1, max_task_retries=2).remote()
    spare = runtime.get(c.where.remote(), timeout=60)[0]  # (the spare node, or the one that replaced it)
    slow = c.slow.remote(3.0)  # in flight when the node dies: run again on the new instance
    after = [c.incr.remote() for _ in range(5)]
    monkeypatch.setenv("LAUNCH_HOME", str(rt["home"]))
    Cluster(load_config(rt["path"])).lifecycle.provider.terminate([spare])
    # no other node has `spare`: the restarted instance waits, then a new spare node registers
    with pytest.raises(runtime.GetTimeoutError):
        runtime.get(slow, timeout=1)
    r = cli("up", str(rt["path"]), "--yes", home=rt["home"])  # replaces the dead worker (min_workers)
    assert r.returncode == 0, r.stderr
    assert runtime.get(slow, timeout=60) == 0
    assert runtime.get(after, timeout=30) == [1, 2, 3, 4, 5]
    node, _, _ = runtime.get(c.where.remote(), timeout=30)
    assert node != spare
    runtime.kill(c)


def test_an_actor_whose_process_dies_first_as_its_node_stops_spends_one_restart(rt, monkeypatch, tmp_path):
    """A machine that shuts down signals every process at once: the actor's process may die, and be seen
    dead, before its agent is told to stop. That is one death, the node's: the actor's single restart brings
    it back on the node that replaces this one (not again on the dying node, which would spend it)."""
    c = Counter.options(resources={"spare": 1}, num_cpus=0, max_restarts=1).remote()
    node, _, pid = runtime.get(c.where.remote(), timeout=60)
    started = tmp_path / "started"
    busy = c.slow.remote(60, str(started))  # in a call: its agent sees the process end at once
    wait_for(started.exists, timeout=30, what="the call to start")
    agent = next(p for p in marked_pids(node) if b"runtime.agent" in Path(f"/proc/{p}/cmdline").read_bytes())
    monkeypatch.setenv("LAUNCH_HOME", str(rt["home"]))
    provider = Cluster(load_config(rt["path"])).lifecycle.provider
    os.kill(pid, signal.SIGTERM)  # the actor's process first, and the agent once it is seen gone
    wait_for(lambda: _ended(pid), timeout=10, every=0.01, what="the actor's process to end")
    os.kill(agent, signal.SIGTERM)
    provider.terminate([node])
    r = cli("up", str(rt["path"]), "--yes", home=rt["home"])  # replaces the dead worker (min_workers)
    assert r.returncode == 0, r.stderr
    with pytest.raises(ActorDiedError):  # (no max_task_retries: the call in flight is not run again)
        runtime.get(busy, timeout=30)
    assert runtime.get(c.where.remote(), timeout=60)[0] != node
    assert runtime.get(c.was_restarted.remote(), timeout=30) is True
    runtime.kill(c)


def _ended(pid: int) -> bool:
    """The process is gone, or a zombie not reaped yet (it ran its last)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# --- placement groups ----------------------------------------------------------------------------------

def _nodes_of(pg) -> list[str]:
    return runtime.get([node_of.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, i)).remote()
                        for i in range(pg.bundle_count)], timeout=30)


@pytest.mark.parametrize("strategy, bundles, distinct", [
    ("STRICT_PACK", [{"CPU": 1}, {"CPU": 1}], 1),
    ("PACK", [{"CPU": 1}, {"CPU": 1}], 1),
    ("STRICT_SPREAD", [{"CPU": 1}] * 3, 3),
    ("SPREAD", [{"CPU": 1}, {"CPU": 1}], 2),
])
def test_every_strategy_is_honoured(rt, strategy, bundles, distinct):
    pg = placement_group(bundles, strategy=strategy)
    assert runtime.get(pg.ready(), timeout=30) == pg
    nodes = _nodes_of(pg)
    assert len(set(nodes)) == distinct
    remove_placement_group(pg)


def test_a_group_is_reserved_whole_or_not_at_all(rt):
    before = _available(rt)
    # four 2-CPU bundles on distinct nodes: only the two cpu nodes have 2 CPUs
    pg = placement_group([{"CPU": 2}] * 4, strategy="STRICT_SPREAD")
    assert not pg.wait(timeout_seconds=2)
    after = _available(rt)  # (a node that registered meanwhile does not matter)
    assert {n: after.get(n) for n in before} == before  # nothing half-reserved
    remove_placement_group(pg)


def test_work_in_a_bundle_uses_its_reservation_only(rt):
    pg = placement_group([{"CPU": 2}], strategy="STRICT_PACK")
    runtime.get(pg.ready(), timeout=30)
    node = _nodes_of(pg)[0]
    assert _available(rt)[node]["CPU"] == 0  # reserved: other work cannot take it
    in_pg = node_of.options(num_cpus=1, placement_group=pg)
    assert set(runtime.get([in_pg.remote() for _ in range(6)], timeout=30)) == {node}
    a = Counter.options(num_cpus=1, scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0)).remote()
    assert runtime.get(a.where.remote(), timeout=30)[0] == node
    with pytest.raises(runtime.TaskError, match="does not fit"):  # larger than its bundle: never runs
        runtime.get(node_of.options(num_cpus=3, placement_group=pg).remote(), timeout=30)
    slow = node_of.options(num_cpus=1, placement_group=pg)
    remove_placement_group(pg)  # the actor in it is killed; the reservation goes back to the node
    with pytest.raises(ActorDiedError):
        runtime.get(a.incr.remote(), timeout=30)
    with pytest.raises(runtime.TaskError):
        runtime.get(slow.remote(), timeout=30)
    wait_for(lambda: _available(rt)[node]["CPU"] == 2, timeout=20, every=0.05, what="the node's 2 CPUs free")


def test_the_readme_examples_run_as_jobs(rt):
    r = cli("submit", str(rt["path"]), "examples/counter.py", home=rt["home"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "in order: [11, 12, 13]" in r.stdout and "from a task: 113" in r.stdout and "by name: 114" in r.stdout
    r = cli("submit", str(rt["path"]), "examples/train_gang.py", "--", "2", "0", "1", home=rt["home"])
    assert r.returncode == 0, r.stdout + r.stderr
    nodes = {line.split(" on node ")[1].split(",")[0] for line in r.stdout.splitlines() if line.startswith("rank ")}
    assert len(nodes) == 2  # one rank per node


def test_an_actor_whose_process_dies_while_idle_is_restarted_before_its_next_call(rt):
    import signal

    from runtime.client import HeadClient

    c = Counter.options(max_restarts=1).remote(1)
    _, _, pid = runtime.get(c.where.remote(), timeout=30)
    os.kill(pid, signal.SIGKILL)  # nothing is calling it: the node notices on its own

    def attempt() -> int:
        with HeadClient(rt["address"], rt["token"]) as h:
            return next(i.attempt for i in h.list_items("actor") if i.id == c._actor_id)

    wait_for(lambda: attempt() == 1, timeout=20, every=0.05, what="the actor restarted once")
    assert runtime.get(c.incr.remote(), timeout=30) == 2  # made again from its constructor's arguments
    runtime.kill(c)


DRIVER = """
import os, runtime
runtime.init()

@runtime.remote
class Held:
    def ping(self):
        return os.getpid()

owned = Held.options(name="orphan").remote()
kept = Held.options(name="detached-one", lifetime="detached").remote()
runtime.get([owned.ping.remote(), kept.ping.remote()])
print("ready", flush=True)
input()  # killed here
"""


def test_a_driver_killed_with_kill_9_leaves_no_actor_but_detached_ones(rt):
    import subprocess
    import sys

    env = {**os.environ, "LAUNCH_HEAD_ADDRESS": rt["address"], "LAUNCH_CLUSTER_TOKEN": rt["token"]}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        assert driver.stdout.readline().strip() == "ready"
        assert runtime.get_actor("orphan") and runtime.get_actor("detached-one")
        driver.kill()  # no shutdown, no atexit: only its silence tells the head
        driver.wait()
        wait_for(lambda: _raises(lambda: runtime.get_actor("orphan"), ValueError), timeout=30, every=0.05,
                 what="the orphaned actor ended")
        detached = runtime.get_actor("detached-one")
        assert runtime.get(detached.ping.remote(), timeout=30) > 0
        runtime.kill(detached)
    finally:
        driver.kill()
