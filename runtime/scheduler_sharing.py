"""How the head's scheduler lets a node's slots be used beyond what it holds (runtime/scheduler.py)."""

from __future__ import annotations

from collections import deque

from runtime.work import EPS, PREFETCH_MAX_TASK_S, PREFETCH_REVOKE_S, QUEUED, RUNNING, Item, Node, Shape


class NodeSharing:
    """Running more on a node than it holds for: work given ahead of time (prefetch, taken back if it waits),
    and the CPUs of an item waiting in a `get` lent to other work. Its state is the Scheduler's (set in
    Scheduler.__init__); it is a part of Scheduler, not used alone."""

    def _prefetchable(self, s: Shape, item: Item | None) -> bool:
        return item is not None and item.kind == "task" and not item.request.get("GPU") and self._depth(s) > 0

    def _depth(self, s: Shape) -> int:
        """How many of a shape's tasks a node is given ahead per CPU: enough to keep each CPU busy over a round
        trip to the head (a few ms), more for shorter tasks; 0 for a shape not given ahead."""
        t = self.task_seconds.get(s, PREFETCH_MAX_TASK_S)
        if t >= PREFETCH_MAX_TASK_S:
            return 0
        return 8 if t < 0.01 else 2 if t < 0.1 else 1

    def _prefetch(self, s: Shape, q: deque[str], candidates: list[Node], now: float) -> list[Item]:
        request = dict(s)
        given = []
        depth = self._depth(s)
        for node in candidates:
            room = depth * max(1, int(node.total.get("CPU", 0.0))) - len(node.prefetched)
            if (room <= 0 or now < node.no_prefetch_until
                    or not all(node.total.get(k, 0.0) + EPS >= v for k, v in request.items())
                    or any(self.items[i].kind != "task" for i in node.running)):  # a job holds it: may wait long
                continue
            while q and room > 0:
                item = self.items.get(q.popleft())
                if item is None or item.state != QUEUED:
                    continue
                self.queued_count[s] -= 1
                node.prefetched.append(item.id)
                self._assign(node, item, now)
                given.append(item)
                room -= 1
        return given

    def to_revoke(self, now: float) -> list[Item]:
        """Items given ahead that wait on their node past PREFETCH_REVOKE_S (each asked back once)."""
        out = []
        for node in self.nodes.values():
            for item_id in node.prefetched:
                item = self.items[item_id]
                if item_id not in node.revoking and now - item.started_at > PREFETCH_REVOKE_S:
                    node.revoking.add(item_id)
                    out.append(item)
        return out

    @staticmethod
    def _held(item: Item) -> dict[str, float]:
        """What a running item holds on its node now: its request, less the CPUs it lent."""
        if not item.lent_cpu:
            return item.request
        return {**item.request, "CPU": item.request.get("CPU", 0.0) - item.lent_cpu}

    def lend_cpu(self, item_id: str) -> str | None:
        """A running item blocks in a `get` of other work: its CPUs go back to its node for that work to
        run (Ray does the same; otherwise parents waiting on children they hold the CPUs of never end).
        Returns its node, or None if there is nothing to lend."""
        item = self.items.get(item_id)
        cpu = item.request.get("CPU", 0.0) if item is not None else 0.0
        if item is None or item.state != RUNNING or item.lent_cpu or cpu <= 0:
            return None
        node = self.nodes.get(item.node_id)
        if node is None or item_id not in node.running:
            return None
        item.lent_cpu = cpu
        self.room_changed = True
        self._pool(item, node).give_back({"CPU": cpu}, [])
        return node.id

    def take_back_cpu(self, item_id: str) -> str | None:
        """The `get` returned: the item holds its CPUs again (its node may be over for a while, as in
        Ray: nothing new starts there until it is not). Returns its node, or None."""
        item = self.items.get(item_id)
        if item is None or not item.lent_cpu:
            return None
        cpu, item.lent_cpu = item.lent_cpu, 0.0
        node = self.nodes.get(item.node_id)
        if item.state != RUNNING or node is None or item_id not in node.running:
            return None
        pool = self._pool(item, node)
        pool.available["CPU"] = pool.available.get("CPU", 0.0) - cpu
        return node.id
