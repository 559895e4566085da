"""The monitor's upkeep decisions (autoscaler/upkeep.py), by themselves: which workers a tick sets up."""

from __future__ import annotations

from concurrent.futures import Future

from autoscaler.monitor import _Round
from autoscaler.planner import Plan
from autoscaler.upkeep import WorkerUpkeep
from core.node import NodeInfo
from core.status import NodeStatus
from core.tags import KIND_WORKER, TAG_KIND, TAG_STATUS


class Upkeep(WorkerUpkeep):
    """The state tend() reads, and the bootstraps it starts (recorded, not run)."""

    def __init__(self):
        self.round = _Round(1)
        self.bootstrapping: dict[str, Future] = {}
        self.requests: dict = {}
        self.static = False
        self.started: list[str] = []
        self.events: list[str] = []

    def leaving(self, node_id: str) -> bool:
        return False

    def event(self, kind: str, **fields) -> None:
        self.events.append(kind)

    def bootstrap(self, node: NodeInfo) -> None:
        self.started.append(node.id)


def _worker(node_id: str, status: NodeStatus) -> NodeInfo:
    return NodeInfo(node_id, "cpu", "running", tags={TAG_KIND: KIND_WORKER, TAG_STATUS: status.value})


def test_a_node_left_half_set_up_by_nobody_is_adopted():
    u = Upkeep()
    u.tend([_worker("w1", NodeStatus.SETTING_UP)], Plan())
    assert (u.started, u.events) == (["w1"], ["adopt"])


def test_a_node_this_monitor_set_up_since_the_listing_is_not_set_up_again():
    # its setup ended between the tick's listing (still "setting-up") and tend(): the status is stale
    u = Upkeep()
    done: Future = Future()
    done.set_result(None)
    u.bootstrapping["w1"] = done
    u.round.checked.add("w1")
    u.tend([_worker("w1", NodeStatus.SETTING_UP)], Plan())
    assert (u.started, u.events) == ([], [])
