"""The placement-group part of the head's scheduler (runtime/scheduler.py)."""

from __future__ import annotations

from runtime.work import (CANCELLED, EPS, QUEUED, RUNNING, Bundle, Group, Item, Node, Shape, bundle_size, bundle_sum,
                          fmt_request, place_key, shape_of)


class PlacementGroups:
    """The scheduler's placement groups: reserving bundles whole or not at all, by strategy, and the work placed
    into them. Its state is the Scheduler's (set in Scheduler.__init__); it is a part of Scheduler, not used
    alone."""

    @staticmethod
    def _bundle_problem(group: Group, item: Item) -> str | None:
        if item.bundle_index >= len(group.bundles):
            return f"placement group {group.id} has no bundle {item.bundle_index} (it has {len(group.bundles)})"
        wanted = [group.bundles[item.bundle_index]] if item.bundle_index >= 0 else group.bundles
        if any(all(b.request.get(k, 0.0) + EPS >= v for k, v in item.request.items()) for b in wanted):
            return None
        where = f"bundle {item.bundle_index}" if item.bundle_index >= 0 else "any bundle"
        return f"{fmt_request(item.request)} does not fit {where} of placement group {group.id}"

    def _place_groups(self, now: float) -> None:
        still = []
        # what the live nodes have free, in all and at most on one node: a group that asks more cannot
        # be placed, and is passed over at once (thousands may wait for the autoscaler's nodes)
        free_sum: dict[str, float] = {}
        free_max: dict[str, float] = {}
        for n in self.nodes.values():
            if n.alive and not n.draining:
                for k, v in n.available.items():
                    free_sum[k] = free_sum.get(k, 0.0) + v
                    free_max[k] = max(free_max.get(k, 0.0), v)
        for pg_id in self.pending_groups:
            item, group = self.items.get(pg_id), self.groups.get(pg_id)
            if item is None or group is None or item.state != QUEUED:
                continue
            if (any(free_sum.get(k, 0.0) + EPS < v for k, v in item.request.items())
                    or any(free_max.get(k, 0.0) + EPS < v for b in item.bundles for k, v in b.items())):
                still.append(pg_id)
                continue
            placement = self._find_placement(group)
            if placement is None:
                still.append(pg_id)
                continue
            for bundle, node_id in zip(group.bundles, placement):
                self._reserve(group, bundle, self.nodes[node_id])
                for k, v in bundle.request.items():
                    free_sum[k] = free_sum.get(k, 0.0) - v
            item.state, item.started_at = RUNNING, now
            self.dirty.add(pg_id)
            if group.queue:
                self.groups_waiting.add(pg_id)
        self.pending_groups = still

    def _find_placement(self, group: Group) -> list[str] | None:
        """A node for each bundle, the strategy respected, on what nodes have free now; None if there is
        none (then nothing is reserved: a group is placed whole or not at all)."""
        nodes = [n for n in self.nodes.values() if n.alive and not n.draining]
        if not nodes:
            return None
        sims: dict[str, Node] = {}

        def sim(n: Node) -> Node:
            if n.id not in sims:
                sims[n.id] = Node(n.id, n.node_type, n.total, available=dict(n.available), gpu_free=dict(n.gpu_free))
            return sims[n.id]

        def holds_all(n: Node) -> bool:
            for b in bundles:
                if not sim(n).fits(b.request):
                    return False
                sim(n).take(b.request)
            return True

        bundles = sorted(group.bundles, key=lambda b: bundle_size(b.request), reverse=True)
        total = bundle_sum([b.request for b in group.bundles])
        placement: dict[int, str] = {}
        if group.strategy in ("STRICT_PACK", "PACK"):
            for n in sorted(nodes, key=lambda n: place_key(n, total)):
                sims.clear()
                if holds_all(n):
                    return [n.id] * len(group.bundles)
            if group.strategy == "STRICT_PACK":
                return None
            sims.clear()
        if group.strategy == "STRICT_SPREAD":
            return self._spread_strictly(group, bundles, nodes)
        used: dict[str, Node] = {}  # the nodes the group uses so far, in the order it took them
        for b in bundles:
            fresh = sorted((n for n in nodes if n.id not in used), key=lambda n: place_key(n, b.request))
            # PACK: onto the nodes it already uses first; SPREAD: onto nodes it does not use yet first
            order = [*used.values(), *fresh] if group.strategy == "PACK" else [*fresh, *used.values()]
            n = next((n for n in order if sim(n).fits(b.request)), None)
            if n is None:
                return None
            sim(n).take(b.request)
            placement[b.index] = n.id
            used.setdefault(n.id, n)
        return [placement[b.index] for b in group.bundles]

    def _spread_strictly(self, group: Group, bundles: list[Bundle], nodes: list[Node]) -> list[str] | None:
        """Each bundle on a node of its own: a matching of bundles to nodes, by backtracking (groups are
        small; the search is bounded)."""
        if len(bundles) > len(nodes):
            return None
        options = [sorted((n for n in nodes if n.fits(b.request)), key=lambda n: place_key(n, b.request))
                   for b in bundles]
        chosen: list[str] = []
        steps = 0

        def search(i: int) -> bool:
            nonlocal steps
            if i == len(bundles):
                return True
            for n in options[i]:
                steps += 1
                if steps > 20000:
                    return False
                if n.id not in chosen:
                    chosen.append(n.id)
                    if search(i + 1):
                        return True
                    chosen.pop()
            return False

        if not search(0):
            return None
        by_index = {b.index: node_id for b, node_id in zip(bundles, chosen)}
        return [by_index[b.index] for b in group.bundles]

    def _reserve(self, group: Group, bundle: Bundle, node: Node) -> None:
        g = bundle.request.get("GPU", 0.0)
        gpu_ids = node.take(bundle.request)
        share = 1.0 if g >= 1 else g
        bundle.node_id = node.id
        bundle.pool = Node(node.id, node.node_type, dict(bundle.request), available=dict(bundle.request),
                           gpu_free={i: share for i in gpu_ids})
        node.reserved.add((group.id, bundle.index))
        node.idle_since = 0.0

    def _release(self, group: Group, now: float) -> None:
        """Give each reserved bundle back to its node. Work still running in one holds its share of the
        node from now on."""
        self.room_changed = True
        for b in group.bundles:
            node = self.nodes.get(b.node_id)
            if node is not None:
                node.reserved.discard((group.id, b.index))
                node.give_back(b.request, list(b.pool.gpu_free))
                for item_id in node.running:
                    item = self.items[item_id]
                    if item.pg_id == group.id and item.placed_bundle == b.index:
                        item.placed_bundle = -1
                        self._hold(node, item)  # the same GPUs, now of the node
                if not node.busy:
                    node.idle_since = now
            b.node_id, b.pool = "", None

    def _unplace(self, group: Group, now: float) -> None:
        """A node holding one of its bundles is gone: the group is placed again, whole."""
        self._release(group, now)
        item = self.items[group.id]
        if item.state == RUNNING:
            item.state = QUEUED
            self._enqueue(item)

    def _remove_group(self, group: Group, now: float) -> None:
        """remove_placement_group: the reservation ends and the work in the group is cancelled."""
        for item_id in list(group.queue):
            item = self.items.get(item_id)
            if item is not None and item.state == QUEUED:
                self._finish(item, CANCELLED, now, message=f"its placement group {group.id} was removed")
        for node in self.nodes.values():
            for item_id in node.running:
                item = self.items[item_id]
                if item.pg_id == group.id and not item.cancel_requested:
                    item.cancel_requested = True
                    self.to_stop.append((item_id, node.id))
        self._release(group, now)
        del self.groups[group.id]
        self.groups_waiting.discard(group.id)
        self.infeasible.pop(group.id, None)
        self._finish(self.items[group.id], CANCELLED, now, message="removed")

    def _schedule_in_group(self, group: Group, now: float) -> list[Item]:
        assigned = []
        while group.queue:
            item = self.items.get(group.queue[0])
            if item is None or item.state != QUEUED:
                group.queue.popleft()
                continue
            wanted = [group.bundles[item.bundle_index]] if item.bundle_index >= 0 else group.bundles
            bundle = next((b for b in wanted if b.pool.fits(item.request)), None)
            if bundle is None:
                break
            group.queue.popleft()
            node = self.nodes[bundle.node_id]
            item.placed_bundle = bundle.index
            self._hold(node, item)
            self._assign(node, item, now)
            assigned.append(item)
        return assigned

    def group_demand(self) -> list[tuple[tuple[Shape, ...], str, int]]:
        """Placement groups waiting to be placed, for the autoscaler: (bundle shapes, strategy, count)."""
        counts: dict[tuple[tuple[Shape, ...], str], int] = {}
        for pg_id in self.pending_groups:
            item, group = self.items.get(pg_id), self.groups.get(pg_id)
            if item is not None and group is not None and item.state == QUEUED:
                key = (tuple(shape_of(b.request) for b in group.bundles), group.strategy)
                counts[key] = counts.get(key, 0) + 1
        return [(bundles, strategy, c) for (bundles, strategy), c in counts.items()]

    def bundles_of(self, pg_id: str) -> list[tuple[dict[str, float], str]]:
        """(request, node id or '') of each bundle of a live group."""
        group = self.groups.get(pg_id)
        return [(b.request, b.node_id) for b in group.bundles] if group else []
