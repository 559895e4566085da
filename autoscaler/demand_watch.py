"""The monitor's wake on new demand (autoscaler/monitor.py): a tick the moment work stops fitting, not at
the next tick_s. The head answers a long poll (WatchDemand) once its demand changes; demand beyond what
the last tick planned for wakes the loop, at most every DEMAND_WAKE_GAP_S."""

from __future__ import annotations

import threading
import time

from runtime.work import pinned_node

DEMAND_WATCH_S = 30.0  # one long poll of the head's demand (WatchDemand)
DEMAND_RETRY_S = 1.0  # after a watch failed (the head restarting, or replaced by a new spec)
DEMAND_WAKE_GAP_S = 0.5  # the least time between two ticks that new demand wakes


class DemandWatch:
    """A part of the Monitor (its head, static, wake and planned_for), not used alone."""

    def watch_demand(self, stop: threading.Event) -> None:
        """(a thread) A tick the moment work stops fitting, not at the next tick_s: the head answers this
        long poll once its demand changes, and demand beyond what the last tick planned for (not work
        pinned to a node) wakes the loop."""
        import grpc  # (imported once runtime set gRPC's environment up: runtime/__init__.py)

        seen, woke = "", 0.0
        while not stop.is_set():
            try:
                reply = self.head.watch_demand(seen, DEMAND_WATCH_S)
            except grpc.RpcError:  # the ticks go on meanwhile (and say what is wrong with the head)
                stop.wait(DEMAND_RETRY_S)
                continue
            seen = reply.fingerprint
            if not self.static and grew(demand_counts(reply), self.planned_for):
                # a backlog that keeps growing would wake it again and again: once per gap at most (each
                # tick is a cloud's list call)
                stop.wait(max(0.0, woke + DEMAND_WAKE_GAP_S - time.monotonic()))
                woke = time.monotonic()
                self.wake.set()


def demand_counts(state) -> dict:
    """Queued work by shape and placement groups by bundles, from a ClusterState or WatchDemandReply
    (work pinned to a node left out: no node launched can run it)."""
    counts: dict = {}
    for d in state.demand:
        if pinned_node(d.shape.amounts) is None:
            counts[tuple(sorted(d.shape.amounts.items()))] = d.count
    for g in state.groups:
        counts[(g.strategy, *(tuple(sorted(b.amounts.items())) for b in g.bundles))] = g.count
    return counts


def grew(now: dict, before: dict) -> bool:
    return any(count > before.get(key, 0) for key, count in now.items())
