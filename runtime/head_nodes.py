"""The head service's nodes (runtime/head.py)."""

from __future__ import annotations

import asyncio
import logging

import grpc

from runtime.head_state import (ALIVE, ASSIGNMENT_BATCH, DEAD, REFUSALS, NodeRecord, in_step, log, resolve_future,
                                under_lock)
from runtime.limits import MAX_REPLY_BYTES
from runtime.proto import head_pb2 as pb
from runtime.work import Item


# how soon a replaced WorkStream with nothing to send notices and ends
STREAM_CHECK_S = 0.5
WATCH_DEMAND_MAX_S = 60.0  # the longest a WatchDemand call waits
HEARTBEATS_PER_S = 200.0  # past this many nodes' worth at the configured interval, every node beats less often


class NodeService:
    """The nodes: registration (and again, adopting what a node still runs), heartbeats, death, drain and
    removal, and each node's stream of work. Its state is the HeadServicer's (set in HeadServicer.__init__): a
    part of it, not used alone."""

    def RegisterNode(self, request, context):
        now = self.clock()
        total = dict(request.total.amounts)
        with self.lock:
            old = self.nodes.get(request.node_id)
            # an agent that outlived its node's removal (its instance is going) is not taken back: work sent
            # to it would die with it. A node started again after a stop registers afresh (first).
            if old is not None and old.removed and not request.first:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"node {request.node_id} was removed from "
                              "the cluster (its instance is being stopped or terminated)")
            rec = NodeRecord(request.node_id, request.node_type, request.address, request.is_head,
                             dict(request.labels), now, now, call_port=request.call_port)
            if old is not None:
                rec.outbox = old.outbox
                old.stream += 1  # the old agent's stream, if still open, stops taking from the outbox
            self.nodes[request.node_id] = rec
            lost, drop = self.sched.add_node(request.node_id, request.node_type, total, request.is_head, now,
                                             list(request.gpu_ids), [(r.id, r.attempt) for r in request.running],
                                             request.first)
            self._settle(now)
        if lost:
            log.warning("node %s registered again: %d item(s) it ran were requeued", request.node_id, len(lost))
        adopted = len(request.running) - len(drop)
        log.info("node %s (%s) registered from %s: %s%s", request.node_id, request.node_type, request.address, total,
                 f"; it still runs {adopted} item(s)" if adopted else "")
        return pb.RegisterNodeReply(heartbeat_interval_s=self.interval_now,
                                    drop=[pb.RunningItem(id=i, attempt=a) for i, a in drop])

    async def Heartbeat(self, request, context):
        """(on the loop: a heartbeat waiting for a busy head holds no thread of its own, so a thousand
        nodes' heartbeats do not make a thousand threads)"""
        return await under_lock(self.lock, context, self._heartbeat, request)

    def _heartbeat(self, request) -> pb.HeartbeatReply:
        rec = self.nodes.get(request.node_id)
        if rec is None or rec.state == DEAD:
            return pb.HeartbeatReply(known=False)
        rec.last_heartbeat = self.clock()
        if request.preempt_at and not rec.preempt_at:
            self._preempting(rec, request.preempt_at, request.preempt_reason[:200])
        return pb.HeartbeatReply(known=True, heartbeat_interval_s=self.interval_now)

    def pace_heartbeats(self) -> None:
        """(housekeeping) The interval every node beats at: the configured one, or, in a cluster too large
        for it, what keeps all heartbeats together near HEARTBEATS_PER_S (a Python head spends most of a
        core on 1,000 heartbeats a second); a node is dead after as many beats missed as the config allows
        (node_timeout_s / heartbeat_interval_s)."""
        alive = sum(1 for r in self.nodes.values() if r.state == ALIVE)
        self.interval_now = max(self.heartbeat_interval_s, alive / HEARTBEATS_PER_S)
        self.timeout_now = self.node_timeout_s * self.interval_now / self.heartbeat_interval_s

    def _preempting(self, rec: NodeRecord, at: float, reason: str) -> None:
        """(under the lock) The node's cloud takes it back at `at`: it gets no new work, and what it runs
        counts as demand from now on, so its replacement is launched while it still runs."""
        rec.preempt_at, rec.preempt_reason = at, reason
        self.sched.preempt(rec.node_id)
        log.warning("node %s is being preempted (%s)", rec.node_id, reason)
        self._settle(self.clock())  # (the demand changed: the autoscaler's watch wakes)

    def _declare_dead(self, r: NodeRecord, now: float, why: str, expected: bool = False) -> int:
        """(under self.lock) The node is gone: what it ran goes back to the queue or fails."""
        r.state = DEAD
        touched = self.sched.remove_node(r.node_id, now, f"its node {why}")
        log.log(logging.INFO if expected else logging.WARNING, "node %s %s: declared dead; %d item(s) requeued "
                "or failed", r.node_id, why, len(touched))
        return len(touched)

    def mark_dead_nodes(self) -> list[str]:
        """Nodes silent for longer than the timeout are dead: their work goes back to the queue. After a
        restart, work whose node never came back goes back too."""
        now = self.clock()
        newly = []
        with self.lock:
            self.pace_heartbeats()
            for r in self.nodes.values():
                if r.state == ALIVE and now - r.last_heartbeat > self.timeout_now:
                    newly.append(r.node_id)
                    self._declare_dead(r, now, f"missed heartbeats for {self.timeout_now:.0f}s")
            expired = self.sched.expire_recovering(now) if self.sched.recovering and now > self.recover_until else []
            if expired:
                log.warning("%d item(s) that ran before the head restarted lost their node: requeued or failed",
                            len(expired))
            if newly or expired:
                self._settle(now)
            for item in self.sched.to_revoke(now):
                self.nodes[item.node_id].outbox.put(pb.Assignment(item_id=item.id, revoke=True))
        return newly

    def RemoveNode(self, request, context):
        now = self.clock()
        with self.lock:
            r = self.nodes.get(request.node_id)
            if r is None or r.state != ALIVE:
                return pb.RemoveNodeReply(known=r is not None, requeued=0)
            r.removed = True
            requeued = self._declare_dead(r, now, f"removed ({request.reason or 'terminated'})", expected=True)
            self._settle(now)
        return pb.RemoveNodeReply(known=True, requeued=requeued)

    def Drain(self, request, context):
        with self.lock:
            drained, running = self.sched.drain(request.node_id, undrain=request.undrain)
            if request.undrain:
                self._settle(self.clock())
        return pb.DrainReply(drained=drained, running=running)

    # --- demand: the autoscaler's wake ---------------------------------------------------------------

    async def WatchDemand(self, request, context):
        """Answers once the demand's fingerprint differs from `seen`: waits on the loop (no thread) until
        a change of the head's state changes it (_settle wakes it), at most timeout_s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(request.timeout_s, 0.0), WATCH_DEMAND_MAX_S)
        woken = loop.create_future()

        def wake():
            loop.call_soon_threadsafe(resolve_future, woken)

        reply = await under_lock(self.lock, context, self._demand_or_watch, request.seen, wake)
        if reply is not None:
            return reply
        try:
            await asyncio.wait_for(woken, max(deadline - loop.time(), 0.0))
        except asyncio.TimeoutError:
            pass
        finally:  # (also when the caller went away; one dict operation, atomic, and _settle walks a copy)
            self.demand_watchers.pop(wake, None)
        return await under_lock(self.lock, context, self._demand_or_watch, None, None)

    def _demand_or_watch(self, seen: str | None, wake) -> pb.WatchDemandReply | None:
        """(under the lock) The demand, unless it is what the caller saw: then None, and `wake` is called
        once it changes. (seen None: the demand, whatever it is.)"""
        fingerprint = self._demand_fingerprint()
        if fingerprint != seen or wake is None:
            demand, groups = self.demand_now()
            return pb.WatchDemandReply(fingerprint=fingerprint, demand=demand, groups=groups)
        self.demand_watchers[wake] = seen
        return None

    def _wake_demand_watchers(self) -> None:
        """(under the lock, from _settle, while some watch) Wakes the watchers that saw another demand."""
        fingerprint = self._demand_fingerprint()
        for wake, seen in list(self.demand_watchers.items()):
            if seen != fingerprint:
                del self.demand_watchers[wake]
                wake()

    def _demand_fingerprint(self) -> str:
        """(under the lock) The demand, hashed: computed at every change while the autoscaler watches, so
        cheaply (no messages built). Compared only within this head's life (a restarted head's differs:
        it answers at once)."""
        key = (tuple(sorted(self.sched.demand())), tuple(sorted(self.sched.group_demand())))
        return format(hash(key) & 0xFFFFFFFFFFFFFFFF, "x")

    def demand_now(self) -> tuple[list[pb.ShapeDemand], list[pb.GroupDemand]]:
        """(under the lock) Queued work that fits no node now, and placement groups not placed yet."""
        demand = [pb.ShapeDemand(shape=pb.Resources(amounts=dict(s)), count=c) for s, c in sorted(self.sched.demand())]
        groups = [pb.GroupDemand(bundles=[pb.Resources(amounts=dict(b)) for b in bundles], strategy=strategy,
                                 count=c) for bundles, strategy, c in sorted(self.sched.group_demand())]
        return demand, groups

    async def WorkStream(self, request, context):
        """The node's assignments, in order. A re-opened stream replaces the one before (which stops, and
        puts back what it took but did not send) and first sends again everything the node is counted
        to run: one sent on a stream that broke may never have arrived. The agent ignores what it has.
        Waits on the server's loop, holding no thread; a node that goes away cancels it."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        rec, me, again = await in_step(context, self._open_stream, request.node_id,
                                       lambda: loop.call_soon_threadsafe(ready.set))
        for start in range(0, len(again), ASSIGNMENT_BATCH):
            yield pb.Assignments(items=again[start:start + ASSIGNMENT_BATCH])
        while rec.stream == me:
            ready.clear()  # before taking: a put from now on sets it again
            batch = rec.outbox.take(ASSIGNMENT_BATCH, MAX_REPLY_BYTES)
            if not batch:
                try:  # (a replaced stream notices within this)
                    await asyncio.wait_for(ready.wait(), STREAM_CHECK_S)
                except asyncio.TimeoutError:
                    pass
                continue
            if rec.stream != me:
                rec.outbox.put_back(batch)
                return
            yield pb.Assignments(items=batch)

    def _open_stream(self, node_id: str, wake) -> tuple[NodeRecord, int, list[pb.Assignment]]:
        """(a step) The node's stream made its current one: its record, its number, and what to send again."""
        with self.lock:
            rec = self.nodes.get(node_id)
            if rec is None:
                REFUSALS.abort(grpc.StatusCode.NOT_FOUND, f"node {node_id} is not registered")
            rec.stream += 1
            rec.outbox.wake = wake
            node = self.sched.nodes.get(node_id)
            again = [] if rec.stream == 1 or node is None else self._assignments(self._given_to(node), {})
            return rec, rec.stream, again

    def _given_to(self, node) -> list[Item]:
        """(under self.lock) What a node is counted to run, in an order it can start it in: actors before
        their calls (in line), then what was given ahead."""
        ids = [*sorted(node.running), *self.sched.calls_given_on(node), *node.prefetched]
        return [self.sched.items[i] for i in ids]
