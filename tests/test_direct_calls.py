"""Actor calls straight from the caller to the agent of the actor's node (runtime/direct.py), on one real local
cluster shared by this module: they need no head while they run, keep each caller's order with calls that
go by the head, give every call an outcome when the actor dies or is killed, and their refs work anywhere.

Nodes: head {CPU 1}; two `cpu` {CPU 2}. The autoscaler is off.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

import runtime
from runtime.client import HeadClient
from runtime.exceptions import ActorDiedError, TaskCancelledError
from tests.infra import ROOT, RunningCluster, local_cluster, node_dir, wait_for


@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("direct")
    data = local_cluster("direct", runtime={"heartbeat_interval_s": 0.2, "node_timeout_s": 1.5},
                         autoscaler={"enabled": False}, max_workers=2)
    data["available_node_types"] = {
        "head": {"resources": {"CPU": 1}, "max_workers": 0},
        "cpu": {"resources": {"CPU": 2}, "min_workers": 2, "max_workers": 2},
    }
    c = RunningCluster(tmp, data)
    ids = {t: i for i, t in c.node_types().items()}
    yield {"path": c.path, "home": c.home, "address": c.address, "token": c.token, "head": ids["head"]}
    c.down()


def _head_pid(rt) -> int:
    node = rt["home"] / "clusters" / "direct" / "local" / "nodes" / rt["head"]
    return int((node_dir(node) / "pids" / "head.pid").read_text())


def _head_items(rt, kind: str) -> dict[str, str]:
    runtime.wait([], num_returns=0, timeout=0)  # what this driver submitted has reached the head
    with HeadClient(rt["address"], rt["token"]) as c:
        return {i.id: i.state for i in c.list_items(kind)}


@runtime.remote
class Log:
    def __init__(self):
        self.seen = []
        self.pid = os.getpid()

    def add(self, x):
        self.seen.append(x)
        return len(self.seen)

    def add_all(self, xs):  # (a list of refs: they arrive as refs, nested)
        self.seen.extend(runtime.get(xs))
        return len(self.seen)

    def slow(self, seconds: float, started: str = ""):
        if started:
            open(started, "w").close()
        time.sleep(seconds)
        return "slept"

    def read(self):
        return list(self.seen)

    def big(self, n: int) -> bytes:
        return bytes(range(256)) * (n // 256)

    def process(self):
        return self.pid


@runtime.remote(num_cpus=0)
def plus_one(x):
    return x + 1


@runtime.remote(num_cpus=0)
def size_of(x) -> int:
    return len(x)


def _ready(actor) -> None:
    """The actor placed, and this driver's calls of it sent straight from now on: its first call went the
    head's way (the actor was not placed yet), and is seen done; the second asked the head where it is."""
    runtime.get(actor.read.remote(), timeout=60)
    second = actor.read.remote()
    runtime.get(second, timeout=60)
    assert second._direct is not None


def test_calls_go_straight_to_the_actors_node_and_need_no_head(rt):
    log = Log.remote()
    _ready(log)
    head = _head_pid(rt)
    os.kill(head, signal.SIGSTOP)
    try:
        assert [runtime.get(log.add.remote(i), timeout=10) for i in range(20)] == list(range(1, 21))
        refs = [log.add.remote(i) for i in range(20, 120)]  # many on the way at once
        assert runtime.get(refs, timeout=10) == list(range(21, 121))
    finally:
        os.kill(head, signal.SIGCONT)
    # the head records them all once it runs again (the node reports each), so they are listed, and found
    ids = {r.id for r in refs}
    wait_for(lambda: ids <= {i for i, s in _head_items(rt, "call").items() if s == "finished"}, timeout=30,
             what="the calls made straight recorded by the head")
    runtime.kill(log)


def test_a_ref_of_a_call_made_straight_works_anywhere(rt):
    log, other = Log.remote(), Log.remote()
    _ready(log)
    _ready(other)
    ref = log.add.remote("x")
    assert runtime.get(plus_one.remote(ref), timeout=30) == 2  # a task is given its value
    assert runtime.get(other.add_all.remote([log.add.remote("y")]), timeout=30) == 1  # nested, to another actor
    assert runtime.get(other.read.remote(), timeout=30) == [2]
    held = runtime.put([ref])  # inside a value
    assert runtime.get(runtime.get(held)[0], timeout=30) == 1
    ready, rest = runtime.wait([log.add.remote("z"), plus_one.remote(10)], num_returns=2, timeout=30)
    assert len(ready) == 2 and rest == [] and sorted(map(str, runtime.get(ready))) == ["11", "3"]
    runtime.kill(log)
    runtime.kill(other)


def test_one_callers_calls_run_in_order_whichever_way_they_go(rt):
    log = Log.remote()
    _ready(log)
    value = runtime.put(1000)
    expected, refs = [], []
    for i in range(60):
        if i % 7 == 3:  # a ref as an argument of its own: by the head, behind the calls made straight
            refs.append(log.add.remote(value))
            expected.append(1000)
        else:
            refs.append(log.add.remote(i))
            expected.append(i)
    runtime.get(refs, timeout=60)
    assert runtime.get(log.read.remote(), timeout=30) == expected
    runtime.kill(log)


def test_cancel_and_wait_on_calls_made_straight(rt, tmp_path):
    log = Log.remote()
    _ready(log)
    started = tmp_path / "started"
    slow = log.slow.remote(3, str(started))
    queued = log.add.remote("never")
    wait_for(started.exists, timeout=20, every=0.05, what="the slow call started")
    assert runtime.cancel(queued) == "cancelled"
    with pytest.raises(TaskCancelledError):
        runtime.get(queued, timeout=10)
    ready, rest = runtime.wait([slow], timeout=0.2)
    assert ready == [] and rest == [slow]
    assert runtime.get(slow, timeout=30) == "slept"
    assert runtime.get(log.read.remote(), timeout=30) == []
    runtime.kill(log)


def test_when_the_actor_dies_each_call_is_failed_or_run_again_as_its_retries_say(rt, tmp_path):
    log = Log.options(max_restarts=2).remote()
    _ready(log)
    pid = runtime.get(log.process.remote(), timeout=30)
    started = tmp_path / "started"
    running = log.slow.remote(30, str(started))  # no retries: fails with the process
    queued = [log.add.remote(i) for i in range(5)]  # never started: run on the next instance
    retried = log.slow.options(max_task_retries=1).remote(0)
    wait_for(started.exists, timeout=20, every=0.05, what="the slow call started")
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ActorDiedError, match="died"):
        runtime.get(running, timeout=30)
    assert runtime.get(queued, timeout=60) == [1, 2, 3, 4, 5]
    assert runtime.get(retried, timeout=60) == "slept"
    assert runtime.get(log.process.remote(), timeout=30) != pid
    runtime.kill(log)


def test_calls_of_a_killed_actor_fail_as_through_the_head(rt, tmp_path):
    log = Log.remote()
    _ready(log)
    started = tmp_path / "started"
    running = log.slow.remote(30, str(started))
    queued = log.add.remote(1)
    wait_for(started.exists, timeout=20, every=0.05, what="the slow call started")
    runtime.kill(log)
    for ref in (running, queued):
        with pytest.raises(ActorDiedError, match="killed"):
            runtime.get(ref, timeout=30)
    with pytest.raises(ActorDiedError, match="dead"):
        runtime.get(log.add.remote(2), timeout=30)


def test_a_node_agent_killed_under_calls_made_straight_loses_none(rt, tmp_path):
    """kill -9 of the agent of the actor's node: the calls' stream breaks, and each call on it counts as died
    (it may have run): run again on the actor's next instance while its retries allow, else ActorDiedError
    (Ray's at-most-once). Calls made after run on the next instance."""
    log = Log.options(max_restarts=1).remote()
    _ready(log)
    pid = runtime.get(log.process.remote(), timeout=30)
    started = tmp_path / "started"
    running = log.slow.options(max_task_retries=1).remote(2, str(started))
    after = [log.add.remote(i) for i in range(3)]
    wait_for(started.exists, timeout=20, every=0.05, what="the slow call started")
    agent = int(open(f"/proc/{pid}/stat").read().split(") ")[1].split()[1])  # the actor's process's parent
    os.kill(agent, signal.SIGKILL)
    assert runtime.get(running, timeout=90) == "slept"
    for ref in after:
        with pytest.raises(ActorDiedError, match="died"):
            runtime.get(ref, timeout=60)
    assert runtime.get(log.process.remote(), timeout=30) != pid
    assert runtime.get(log.add.remote("next"), timeout=30) == 1
    runtime.kill(log)


def test_calls_by_the_head_never_gotten_do_not_hold_the_next_back_for_long(rt):
    """Calls that went by the head and whose refs were dropped: the head is asked which are done (once a second
    at most), and calls go straight again after them, in order."""
    log = Log.remote()
    _ready(log)
    value = runtime.put(1)
    for _ in range(3):
        log.add.remote(value)  # by the head (a ref as an argument), never gotten
    made = []
    wait_for(lambda: made.append(log.add.remote(0)) or made[-1]._direct is not None, timeout=20, every=0.1,
             what="calls going straight again")
    seen = runtime.get(log.read.remote(), timeout=30)
    assert seen == [1, 1, 1] + [0] * len(made)
    runtime.kill(log)


def test_a_long_call_outlives_the_pings_on_its_quiet_stream(rt, tmp_path):
    """A caller pings its stream to notice a node gone silent, also while one long call runs and nothing
    moves (here every second): the agent bears the pings, the stream stays up, the call is answered."""
    import subprocess
    import sys

    script = tmp_path / "long_call.py"
    script.write_text(f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from runtime import direct
direct.KEEPALIVE = [("grpc.keepalive_time_ms", 1000), ("grpc.keepalive_timeout_ms", 2000),
                    ("grpc.http2.max_pings_without_data", 0)]
import runtime
from tests.test_direct_calls import Log, _ready
runtime.init(address={rt["address"]!r}, token={rt["token"]!r})
log = Log.remote()
_ready(log)
print(runtime.get(log.slow.remote(5), timeout=30))
""")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "slept", out.stderr[-2000:]


def test_a_stream_that_breaks_while_its_agent_lives_loses_no_answer_and_runs_nothing_twice(rt, tmp_path):
    """The caller's stream to the actor's node breaks (here: cut from the caller's side) while a call runs,
    others wait in line and some are answered: the caller opens a new stream and asks for each call not
    answered; the agent, which ran on, answers them there (the latest answers are kept for that)."""
    from runtime import api

    log = Log.remote()
    _ready(log)
    started = tmp_path / "started"
    running = log.slow.remote(2, str(started))
    queued = [log.add.remote(i) for i in range(5)]
    wait_for(started.exists, timeout=20, every=0.05, what="the slow call started")
    for stream in list(api._connection().direct_calls().streams.values()):
        stream.replies.cancel()  # the stream breaks; the agent runs on
    assert runtime.get(running, timeout=30) == "slept"
    assert runtime.get(queued, timeout=30) == [1, 2, 3, 4, 5]
    assert runtime.get(log.read.remote(), timeout=30) == [0, 1, 2, 3, 4]  # each run once
    runtime.kill(log)


def test_a_result_too_large_for_an_answer_is_kept_on_the_heads_disk_like_any_other(rt):
    """A call made straight whose result is over the message limit: its node uploads it to the head first
    (which takes it though it does not know the call yet), its caller reads it from there, and a task given
    its ref gets it too."""
    log = Log.remote()
    _ready(log)
    ref = log.big.remote(3 << 20)
    assert ref._direct is not None
    value = runtime.get(ref, timeout=60)
    assert len(value) == 3 << 20 and value[:3] == bytes([0, 1, 2])
    assert runtime.get(size_of.remote(ref), timeout=60) == 3 << 20
    other = log.big.remote(2 << 20)  # passed on before its caller looked at it
    assert runtime.get(size_of.remote(other), timeout=60) == 2 << 20
    runtime.kill(log)


def test_wait_on_calls_answered_here_asks_the_head_nothing_of_them(rt):
    """A call made straight and answered (seen by a `wait`) may not be known to the head yet (its node reports
    it in a while): a later `wait` with it among others counts it done here, as ActorPool does."""
    log = Log.remote()
    _ready(log)
    first = log.add.remote(1)
    assert runtime.wait([first], timeout=30) == ([first], [])
    task = plus_one.remote(1)
    ready, rest = runtime.wait([first, task], num_returns=2, timeout=30)
    assert len(ready) == 2 and rest == []
    runtime.kill(log)
