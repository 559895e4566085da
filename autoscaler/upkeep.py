"""The monitor's upkeep of workers (autoscaler/monitor.py): each set up or checked in the background once per
round, file mounts synced continuously, removals on a thread. Its state is the Monitor's (set in
Monitor.__init__): a part of Monitor, not used alone."""

from __future__ import annotations

import os

from autoscaler.planner import Plan
from core.errors import LaunchError
from core.node import NodeInfo
from core.status import SETTING_UP, NodeStatus
from core.tags import KIND_HEAD, TAG_MOUNTS, TAG_REQUEST_ID
from lifecycle.hashing import mounts_stamp
from lifecycle.updater import NodeUpdateFailed

MOUNTS_CHECK_S = 5.0  # (file_mounts_sync_continuously) how often the head's file mounts are looked at


def _describe(e: BaseException) -> str:
    return str(e) if isinstance(e, LaunchError) else f"{type(e).__name__}: {e}"


def _planned_out(p: Plan) -> set[str]:
    """The workers this tick's plan drains or terminates."""
    return {i for i, _ in p.terminations} | {i for i, _ in p.drains}


class WorkerUpkeep:
    """Workers kept up to date, and removed, in the background. Its state is the Monitor's (set in
    Monitor.__init__): a part of Monitor, not used alone."""

    def bootstrap(self, node: NodeInfo) -> None:
        """Set a worker up, or check it and bring it up to date, in the background; what came of it is
        recorded in the round it was started in."""
        lifecycle, rnd = self.lifecycle, self.round

        def run():
            try:
                done = lifecycle.set_up_worker(node, self.token, self.head_address)
            except Exception as e:  # noqa: BLE001  a node whose setup fails backs its type off
                failed = e if isinstance(e, NodeUpdateFailed) else NodeUpdateFailed(node.id, "set-up", [_describe(e)])
                with self.lock:
                    rnd.checked.add(node.id)
                    rnd.failures[node.id] = failed.as_dict()
                self.event("setup-failed", node=node.id, node_type=node.node_type, error=_describe(e))
                self.back_off(node.node_type, f"setup of {node.id} failed: {_describe(e)}", self.clock())
                self.wake.set()
                return
            with self.lock:
                rnd.checked.add(node.id)
                rnd.failures.pop(node.id, None)
                if done:
                    rnd.did(f"worker {node.id}: {done}")
                    self.backoff.pop(node.node_type, None)  # a node of it came up: the type works
            if done:
                self.event("node-up", node=node.id, node_type=node.node_type, done=done)
            self.wake.set()

        self.bootstrapping[node.id] = self.pool.submit(run)

    def in_flight(self, node_id: str) -> bool:
        future = self.bootstrapping.get(node_id)
        return future is not None and not future.done()

    def _busy(self, n: NodeInfo, planned_out: set[str]) -> bool:
        """Not one to start work on now: the head, a worker on its way out, or one being set up or removed."""
        return n.kind == KIND_HEAD or n.id in planned_out or self.in_flight(n.id) or self.leaving(n.id)

    def tend(self, nodes: list[NodeInfo], p: Plan) -> None:
        """Every worker once per round: one half set up that nobody is setting up (a previous monitor
        died) is finished; every other is checked and brought up to date (changed setup or mounts, a
        runtime that stopped or is to restart). A failed one is retried in a static cluster; the planner
        replaces it in an autoscaling one."""
        planned_out = _planned_out(p)
        for n in nodes:
            if (self._busy(n, planned_out) or n.tags.get(TAG_REQUEST_ID) in self.requests  # answered() sets those up
                    or n.status in (NodeStatus.TERMINATING, NodeStatus.DRAINING)):
                continue
            if n.status in SETTING_UP:
                if n.id in self.round.checked:  # set up by this monitor since `nodes` was listed: a stale status
                    continue
                self.event("adopt", node=n.id, node_type=n.node_type, status=n.status.value)
                self.bootstrap(n)
            elif self.to_check(n):
                self.bootstrap(n)

    def sync_mounts(self, nodes: list[NodeInfo], p: Plan, now: float) -> None:
        """(file_mounts_sync_continuously, as in Ray) What changed in the file mounts on the head (synced to
        it by `up`, or by `launch rsync-up`) is synced to every worker that is up to date, without its setup."""
        if (not (self.cfg.file_mounts_sync_continuously and self.spec.file_mounts) or now < self.mounts_checked + MOUNTS_CHECK_S
                or self.lifecycle.provider.capabilities.self_starting):  # (simulated nodes have no files)
            return
        self.mounts_checked = now
        sources = {remote: os.path.expanduser(remote) for remote in self.spec.file_mounts}
        stamp = mounts_stamp(sources)
        planned_out = _planned_out(p)
        lifecycle = self.lifecycle
        for n in nodes:
            if self._busy(n, planned_out) or n.status != NodeStatus.UP_TO_DATE or n.tags.get(TAG_MOUNTS) == stamp:
                continue

            def run(node=n):
                try:
                    sent = lifecycle.sync_mounts(node, sources, stamp)
                except Exception as e:  # noqa: BLE001  tried again at the next look
                    self.event("mounts-sync-failed", node=node.id, error=_describe(e))
                    return
                if sent:
                    self.event("mounts-synced", node=node.id, files=sent)

            self.bootstrapping[n.id] = self.pool.submit(run)

    def to_check(self, n: NodeInfo) -> bool:
        """Whether a worker is still to be checked in this round (a failed one only in a static cluster:
        the planner replaces it in an autoscaling one)."""
        return n.id not in self.round.checked and (self.static or n.status != NodeStatus.UPDATE_FAILED)

    def remove(self, node: NodeInfo, healthy: bool) -> None:
        """Retire (healthy: stopped where the provider caches stopped nodes) or terminate a worker, on a thread:
        an SSH host's runtime takes a moment to stop, a cloud call longer, and the loop goes on meanwhile.
        Until it is done the node counts as leaving."""
        lifecycle = self.lifecycle

        def run():
            try:
                (lifecycle.retire if healthy else lifecycle.terminate)([node])
            except Exception as e:  # noqa: BLE001  the planner sees it again, and removes it again
                self.event("terminate-failed", node=node.id, error=_describe(e))
            self.wake.set()

        self.removing[node.id] = self.creating.submit(run)

    def leaving(self, node_id: str) -> bool:
        """Its removal is on its way (see remove)."""
        future = self.removing.get(node_id)
        return future is not None and not future.done()
