"""The node part of the head's scheduler (runtime/scheduler.py)."""

from __future__ import annotations

from runtime.work import ACTOR, CALL, CANCELLED, FAILED, QUEUED, RUNNING, Item, Node, Shape, node_resource, place_key


class NodeBook:
    """The scheduler's nodes: registration (again, with what a node still runs), death, drain, and the work that
    was running before a head restart. Its state is the Scheduler's (set in Scheduler.__init__); it is a part of
    Scheduler, not used alone."""

    def add_node(self, node_id: str, node_type: str, total: dict[str, float], is_head: bool,
                 now: float, gpu_ids: list[str] | None = None,
                 running: list[tuple[str, int]] | tuple = (),
                 first: bool = True) -> tuple[list[Item], list[tuple[str, int]]]:
        """Register (or re-register) a node that says it still runs `running` ((id, attempt) pairs).
        Returns (items it was given before that went back to the queue, the pairs it runs that are no
        longer its own: to drop). A node registering again (its agent restarted, or its registration was
        retried after a reply that did not reach it) keeps what it says it still runs; the rest of what it
        had goes back to the queue. `first`: the agent's first registration since it started, so what it
        had was lost with its old process (a retry spent); otherwise the agent never got it (no retry
        spent: e.g. the head restarted between giving it out and sending it)."""
        lost = []
        if node_id in self.nodes:
            self._forget_node(node_id, now)
        total = {**total, node_resource(node_id): 1.0}  # what node affinity asks for
        n_gpu = int(total.get("GPU", 0))
        ids = gpu_ids if gpu_ids else [str(i) for i in range(n_gpu)]
        node = self.nodes[node_id] = Node(node_id, node_type, dict(total), is_head, dict(total),
                                          {i: 1.0 for i in ids[:n_gpu]}, idle_since=now)
        self.room_changed = True
        self.nodes_version += 1
        drop = []
        for item_id, attempt in running:
            item = self.items.get(item_id)
            if (self.recovering.get(item_id) != node_id or item.attempt != attempt
                    or item.state != RUNNING):
                drop.append((item_id, attempt))
                continue
            del self.recovering[item_id]  # it ran here before the head restarted, and still does
            node.idle_since = 0.0
            if item.kind == CALL:  # holds nothing: its actor's instance has it
                if item.actor_id in self.actors:
                    self.actors[item.actor_id].given[item.id] = item.seq
                continue
            if item.kind == ACTOR:
                self.calls_ready.add(item.id)
            if node.prefetched or not node.fits(item.request):
                node.prefetched.append(item_id)  # the agent runs it after what it runs now
                continue
            self._hold(node, item)
        for item_id in [i for i, n in self.recovering.items() if n == node_id]:  # it no longer runs them
            if self.recovering.pop(item_id, None) is None or self.items[item_id].state != RUNNING:
                continue  # an actor's call already put back with its actor
            self._retry_or_fail(self.items[item_id], now, (f"its node agent restarted ({node_id})" if first
                                                            else f"it never reached node {node_id}"), counted=first)
            lost.append(self.items[item_id])
        self._recheck_infeasible()
        return lost, drop

    def _ordered(self, s: Shape, request: dict[str, float]) -> list[Node]:
        """The nodes that may take new work, in the order work of this shape goes to them (place_key: what a
        node has never changes), sorted again only when the nodes changed."""
        cached = self.orders.get(s)
        if cached is None or cached[0] != self.nodes_version:
            ordered = sorted((n for n in self.nodes.values() if n.alive and not n.draining),
                             key=lambda n: place_key(n, request))
            cached = self.orders[s] = (self.nodes_version, ordered)
        return cached[1]

    def _forget_node(self, node_id: str, now: float) -> None:
        """The node's record goes; what it was counted to run waits for it like work after a head restart
        (add_node adopts what it still runs), and its bundles' groups are placed again."""
        old = self.nodes.pop(node_id)
        self.nodes_version += 1
        for pg_id in sorted({g for g, _ in old.reserved}):
            self._unplace(self.groups[pg_id], now)
        for item_id in [*old.running, *old.prefetched, *self.calls_given_on(old)]:
            item = self.items[item_id]
            if item.state == RUNNING and item.node_id == node_id:
                item.placed_bundle = -1  # held of the node from now on, not of a bundle placed again
                self.recovering[item_id] = node_id

    def recover(self, item: Item) -> None:
        """(head restart) An item the store says was running on item.node_id: held for that node. Items
        come in submission order (an actor before its calls)."""
        self._order += 1
        item.seq, item.state = self._order, RUNNING
        self.items[item.id] = item
        self.recovering[item.id] = item.node_id
        if item.kind == ACTOR:
            self._register_actor(item)

    def expire_recovering(self, now: float) -> list[Item]:
        """The recovery grace is over: items whose node never came back go back to the queue."""
        gone = [self.items[i] for i in self.recovering]
        for item in gone:
            if self.recovering.pop(item.id, None) is not None and item.state == RUNNING:
                self._retry_or_fail(item, now, f"its node {item.node_id} did not come back after the head restarted")
        return gone

    def remove_node(self, node_id: str, now: float, reason: str = "its node died") -> list[Item]:
        """The node is gone: its items go back to the queue, or fail once out of retries. A node its cloud
        took back after a notice (preempted) costs its work none of the user's retries."""
        node = self.nodes.pop(node_id, None)
        preempted = node_id in self.preempting
        self.preempting.discard(node_id)
        if node is None:
            return []
        self.nodes_version += 1
        for pg_id in sorted({g for g, _ in node.reserved}):  # a group with a bundle here is placed again
            self._unplace(self.groups[pg_id], now)
        touched = []
        for item_id in sorted(node.running) + list(node.prefetched):
            item = self.items[item_id]
            if item.state == RUNNING and item.node_id == node_id:
                self._retry_or_fail(item, now, f"{'its node was preempted' if preempted else reason} ({node_id})",
                                    counted=not preempted)
                touched.append(item)
        return touched

    def _retry_or_fail(self, item: Item, now: float, reason: str, counted: bool = True) -> None:
        """The item's attempt is over without a result: it goes back to the queue while retries are left
        (`counted` False: an attempt that never started, retried for free), or fails."""
        self.recovering.pop(item.id, None)
        if item.kind == ACTOR:  # the calls its instance had go back in line (or fail), before it restarts
            actor = self.actors.get(item.id)
            for call_id in sorted(actor.given, key=actor.given.get) if actor else ():
                self._retry_or_fail(self.items[call_id], now, f"its actor {item.id} died ({reason})", counted)
        elif item.kind == CALL and item.actor_id in self.actors:
            self.actors[item.actor_id].given.pop(item.id, None)
        item.node_id, item.gpu_ids, item.lent_cpu, item.placed_bundle = "", [], 0.0, -1
        self.dirty.add(item.id)
        if item.cancel_requested:
            self._finish(item, CANCELLED, now, message="cancelled")
        elif (not counted or item.attempt - item.undelivered < item.max_retries) and self._can_requeue(item):
            item.undelivered += not counted
            item.attempt += 1
            item.state = QUEUED
            self._enqueue(item)
        else:
            self._finish(item, FAILED, now, message=f"{reason} and no retries are left")

    def _can_requeue(self, item: Item) -> bool:
        if item.kind == CALL:
            return item.actor_id in self.actors
        return not item.pg_id or item.pg_id in self.groups

    def preempt(self, node_id: str) -> None:
        """The node's cloud takes it back soon: it gets no new work, and what it runs counts as demand."""
        self.drain(node_id)
        self.preempting.add(node_id)

    def drain(self, node_id: str, undrain: bool = False) -> tuple[bool, int]:
        """Stop (or, undrain, resume) giving the node new work. Returns (drained: nothing runs, running)."""
        node = self.nodes.get(node_id)
        if node is None:
            return True, 0
        if node.draining == undrain:
            self.nodes_version += 1  # (a drained node takes no new work: out of the order)
        node.draining = not undrain
        self.room_changed = self.room_changed or undrain
        busy = node.load
        return not busy and not undrain, busy
