"""The head's resource-aware scheduler: pure state, no I/O. The head service calls it under one lock.

- Queued work is grouped by resource shape (real queues hold 100k items of a handful of shapes), so the
  demand report costs O(shapes), not O(items).
- A queued item goes to a node whose available resources cover it; among those, the node that wastes
  least: a node with GPUs (or custom resources) the item does not need comes last, then smaller nodes
  first, so large nodes stay free for the work that needs them.
- GPUs are handed out by id: whole GPUs for requests >= 1, a share of one GPU for fractions, so no two
  items share a GPU unless both asked for fractions.
- Work that no node type of the cluster could ever run is infeasible, with the reason; it is kept and
  re-checked when a larger node registers.
- A node that dies gives its running items back to the queue (up to each item's max_retries).
- Done items leave: the head writes each changed item to its store (take_dirty) and then forgets the
  done ones (forget); a dependency that is no longer here is looked up with `done_item`.
- Pipelining: when short tasks (of a shape whose recent tasks ran under PREFETCH_MAX_TASK_S) queue up
  beyond what fits, a node is given some in advance (`prefetched`: 1-8 per CPU, more for shorter
  tasks, holding no resources here). Its agent starts them in order as its own slots free, without a
  round trip to the head; the head counts one as running (holding resources) when a completion makes
  room, in the same order. The agent is what keeps a node from running more than it has. One that
  waits past PREFETCH_REVOKE_S is asked back (what holds the node may be waiting for it).
- After a head restart, items that were running are `recover`ed: held for their node, which adopts
  them when it registers again saying it still runs them; the others go back to the queue.
- Actors: an `actor` item is placed like a task and then holds its resources (and its node) until it is
  killed or dies. Its method `call`s hold nothing of their own: they wait in the actor's line, in
  submission order, and go to the node of its current instance one after another (the agent runs them
  in that order). An instance lost with its node or process is restarted (max_restarts: the item's
  max_retries); the calls its instance had are retried (max_task_retries) or fail.
- Placement groups: a `pg` item reserves its bundles on nodes all at once or not at all, by strategy
  (PACK, SPREAD, STRICT_PACK, STRICT_SPREAD). A reserved bundle is a pool of its own: work submitted into
  it is placed there, never on the node's free resources. A node holding a bundle is not idle. A group
  that lost a node is placed again whole; removing a group cancels the work in it.
"""

from __future__ import annotations

from bisect import insort
from collections import OrderedDict, deque
from collections.abc import Callable

from runtime.scheduler_actors import ActorLines
from runtime.scheduler_cancel import Cancelling
from runtime.scheduler_groups import PlacementGroups
from runtime.scheduler_nodes import NodeBook
from runtime.scheduler_sharing import NodeSharing
from runtime.work import (ACTOR, BLOCKED, CALL, CANCELLED, EPS, FAILED, FINISHED, INFEASIBLE, LOST, OBJECT, PG,
                          PREFETCH_PAUSE_S, QUEUED, REVOKED, RUNNING, Actor, Bundle, Group, Item, Node, Shape,
                          bundle_sum, dependency_failed, fmt_request, pinned_node, type_can_run,
                          validate_request)


class Scheduler(NodeBook, PlacementGroups, ActorLines, NodeSharing, Cancelling):
    def __init__(self, node_types: dict[str, dict[str, float]] | None = None,
                 done_item: Callable[[str], tuple[str, str] | None] = lambda item_id: None):
        self.node_types = node_types or {}
        self.done_item = done_item  # (state, message) of a done item already forgotten here; None: unknown
        self.dirty: set[str] = set()  # items changed since the last take_dirty
        self.recovering: dict[str, str] = {}  # item id -> the node it ran on before a head restart
        self.finished_ids: list[str] = []
        self.items: dict[str, Item] = {}
        self.nodes: dict[str, Node] = {}
        self.queues: OrderedDict[Shape, deque[str]] = OrderedDict()
        self.queued_count: dict[Shape, int] = {}
        self.task_seconds: dict[Shape, float] = {}  # recent run time of tasks by shape (moving average)
        self.infeasible: dict[str, str] = {}  # item id -> reason
        self.dependents: dict[str, set[str]] = {}
        self.children: dict[str, set[str]] = {}  # parent id -> the items it submitted still in memory
        self._seq = 0
        self._order = 0
        self.actors: dict[str, Actor] = {}  # live actors (not done)
        self.actor_names: dict[str, str] = {}  # name -> live actor id
        self.calls_ready: set[str] = set()  # actors whose line may have a call to hand out
        self.groups_waiting: set[str] = set()  # placement groups with work queued in them
        self.groups: dict[str, Group] = {}  # live placement groups
        self.pending_groups: list[str] = []  # not placed yet, in submission order
        self.to_stop: list[tuple[str, str]] = []  # (item, node): running work the head tells its node to stop
        # pending groups are tried again only once something may have made room (a node came, resources
        # were given back, a group arrived): a schedule() per completion must not re-place them all
        self.room_changed = False
        self.preempting: set[str] = set()  # nodes whose cloud is taking them back (a notice)
        # With 1,000 nodes and a long queue, each completion would sort and scan every node for each shape:
        # the nodes' order per shape is kept until the nodes change (nodes_version), and a shape whose last
        # pass left work queued is tried only on the nodes that got room back since (Node.grew).
        self.nodes_version = 0
        self.orders: dict[Shape, tuple[int, list[Node]]] = {}
        self.saturated: dict[Shape, tuple[int, int]] = {}  # shape -> (nodes_version, prefetch depth) then

    # --- nodes --------------------------------------------------------------------------------------

    # --- submission ---------------------------------------------------------------------------------

    def new_id(self, kind: str) -> str:
        self._seq += 1
        return f"{kind[0]}-{self._seq:08x}"

    @property
    def id_seq(self) -> int:
        """The last id number given (the head keeps it in its store: see resume_ids)."""
        return self._seq

    def resume_ids(self, last: int) -> None:
        """After a head restart: go on from the last id number the previous head gave."""
        self._seq = max(self._seq, last)

    def state_of(self, item_id: str) -> str | None:
        item = self.items.get(item_id)
        if item is not None:
            return item.state
        done = self.done_item(item_id)
        return done[0] if done is not None else None

    def submit(self, item: Item, now: float) -> None:
        validate_request(item.request)
        self._order += 1
        item.seq = self._order
        self.items[item.id] = item
        self.dirty.add(item.id)
        if item.parent_id:
            self.children.setdefault(item.parent_id, set()).add(item.id)
        if item.kind == OBJECT:  # its value came with it
            self._finish(item, FINISHED, now)
            return
        if item.kind == ACTOR:
            self._register_actor(item)
        elif item.kind == PG:
            self.groups[item.id] = Group(item.id, item.strategy, [Bundle(i, dict(b)) for i, b in enumerate(item.bundles)])
        elif item.kind == CALL:
            if item.actor_id not in self.actors:
                self._finish(item, FAILED, now, message=f"its actor {item.actor_id} is {self._dead_actor(item.actor_id)}")
                return
            insort(self.actors[item.actor_id].waiting, (item.seq, item.id))  # its place in line, from now
        if item.pg_id and item.pg_id not in self.groups:
            state = self.state_of(item.pg_id)
            self._finish(item, FAILED, now, message=f"placement group {item.pg_id} is "
                         f"{'unknown' if state is None else 'removed'}")
            return
        dep_states = {d: self.state_of(d) for d in item.depends_on}
        unknown = sorted(d for d, s in dep_states.items() if s is None)
        if unknown:
            self._finish(item, FAILED, now, message=f"unknown dependency {unknown[0]}")
            return
        failed_dep = next((d for d, s in sorted(dep_states.items()) if s in (FAILED, CANCELLED)), None)
        if failed_dep:
            self._finish(item, FAILED, now, message=dependency_failed(failed_dep, dep_states[failed_dep]))
            return
        pending = {d for d, s in dep_states.items() if s != FINISHED}
        if pending:
            item.state = BLOCKED
            for d in pending:
                self.dependents.setdefault(d, set()).add(item.id)
            item.depends_on = pending
            return
        self._admit(item)

    def _admit(self, item: Item) -> None:
        if item.kind == CALL:  # already in its actor's line
            item.state = QUEUED
            self.dirty.add(item.id)
            self.calls_ready.add(item.actor_id)
            return
        if item.pg_id:
            group = self.groups.get(item.pg_id)
            reason = "its placement group was removed" if group is None else self._bundle_problem(group, item)
            if reason:  # larger than its bundle: it could never run
                self._finish(item, FAILED, item.submitted_at, message=reason)
            else:
                item.state = QUEUED
                self._enqueue(item)
            return
        pinned = pinned_node(item.request)
        if pinned is not None and pinned not in self.nodes:
            self._finish(item, FAILED, item.submitted_at, message=f"no node {pinned} in the cluster (its node affinity)")
            return
        reason = self._infeasible(item)
        if reason:
            item.state = INFEASIBLE
            self.dirty.add(item.id)
            item.message = reason
            self.infeasible[item.id] = reason
        else:
            item.state = QUEUED
            self._enqueue(item)

    def _enqueue(self, item: Item) -> None:
        self.dirty.add(item.id)
        if item.kind == CALL:
            insort(self.actors[item.actor_id].waiting, (item.seq, item.id))
            self.calls_ready.add(item.actor_id)
            return
        if item.kind == PG:
            self.pending_groups.append(item.id)
            self.room_changed = True
            return
        if item.pg_id:
            self.groups[item.pg_id].queue.append(item.id)
            self.groups_waiting.add(item.pg_id)
            return
        s = item.shape
        self.queues.setdefault(s, deque()).append(item.id)
        self.queued_count[s] = self.queued_count.get(s, 0) + 1

    def infeasible_reason(self, request: dict[str, float]) -> str | None:
        """Why no node type (nor any registered node) could ever run this request; None if one could."""
        if not request:
            return None
        for node in self.nodes.values():
            if all(node.total.get(k, 0.0) + EPS >= v for k, v in request.items()):
                return None
        for caps in self.node_types.values():
            if type_can_run(caps, request):  # the planner judges node types with the same rule
                return None
        return f"no node type of the cluster has {fmt_request(request)}"

    def _infeasible(self, item: Item) -> str | None:
        if item.kind != PG:
            return self.infeasible_reason(item.request)
        for i, b in enumerate(item.bundles):
            reason = self.infeasible_reason(b)
            if reason:
                return f"bundle {i}: {reason}"
        if item.strategy == "STRICT_PACK":
            reason = self.infeasible_reason(bundle_sum(item.bundles))
            if reason:
                return f"STRICT_PACK (every bundle on one node): {reason}"
        return None

    def _recheck_infeasible(self) -> None:
        for item_id in list(self.infeasible):
            item = self.items[item_id]
            if self._infeasible(item) is None:
                del self.infeasible[item_id]
                item.message = ""
                item.state = QUEUED
                self._enqueue(item)

    # --- placement ----------------------------------------------------------------------------------

    def schedule(self, now: float) -> list[Item]:
        """Assign every queued item that fits somewhere now; returns the newly assigned items (an actor
        before the calls it is given)."""
        assigned: list[Item] = []
        if self.pending_groups and self.room_changed:
            self.room_changed = False
            self._place_groups(now)
        for pg_id in list(self.groups_waiting):
            group = self.groups.get(pg_id)
            if group is None or not group.queue:
                self.groups_waiting.discard(pg_id)
            elif group.placed:
                assigned += self._schedule_in_group(group, now)
        for s in list(self.queues):
            q = self.queues[s]
            request = dict(s)
            candidates = self._ordered(s, request)
            if self.saturated.get(s) == (self.nodes_version, self._depth(s)):
                candidates = [n for n in candidates if n.grew]  # no other node has more room than last time
            while q:
                item = self.items.get(q[0])
                if item is None or item.state != QUEUED:  # cancelled while queued: dropped lazily
                    q.popleft()
                    continue
                if item.strategy == "SPREAD":  # the least busy node that fits, not the best fit
                    node = min((n for n in candidates if n.fits(request)), key=lambda n: (len(n.running), n.id),
                               default=None)
                else:
                    node = next((n for n in candidates if n.fits(request)), None)
                if node is None:
                    break
                q.popleft()
                self.queued_count[s] -= 1
                self._hold(node, item)
                self._assign(node, item, now)
                assigned.append(item)
            if q and self._prefetchable(s, item):
                assigned += self._prefetch(s, q, candidates, now)
            if q:
                self.saturated[s] = (self.nodes_version, self._depth(s))
            else:
                del self.queues[s]
                self.queued_count.pop(s, None)
                self.saturated.pop(s, None)
        for n in self.nodes.values():
            n.grew = False
        if self.calls_ready:
            assigned += self._hand_out_calls(now)
        return assigned

    def _pool(self, item: Item, node: Node) -> Node:
        """What a running item holds resources of: its bundle's pool, or its node."""
        if item.placed_bundle >= 0:
            group = self.groups.get(item.pg_id)
            if group is not None and group.bundles[item.placed_bundle].node_id == node.id:
                return group.bundles[item.placed_bundle].pool
        return node

    def _hold(self, node: Node, item: Item) -> None:
        pool = self._pool(item, node)
        for k, v in item.request.items():
            pool.available[k] = pool.available.get(k, 0.0) - v
        if item.gpu_ids:  # adopted after a head restart: the GPUs it was given
            share = 1.0 if item.request.get("GPU", 0.0) >= 1 else item.request.get("GPU", 0.0)
            for g in item.gpu_ids:
                pool.gpu_free[g] = pool.gpu_free.get(g, 1.0) - share
        else:
            item.gpu_ids = pool.take_gpus(item.request.get("GPU", 0.0))
        node.running.add(item.id)

    def _assign(self, node: Node, item: Item, now: float) -> None:
        item.state, item.node_id, item.started_at = RUNNING, node.id, now
        self.dirty.add(item.id)
        node.idle_since = 0.0
        if item.kind == ACTOR:  # its calls may go now
            self.calls_ready.add(item.id)

    # --- actors' calls ------------------------------------------------------------------------------

    # --- placement groups ---------------------------------------------------------------------------

    # --- completion ---------------------------------------------------------------------------------

    def complete(self, item_id: str, state: str, now: float, *, exit_code: int = 0, message: str = "",
                 result: object = None, node_id: str | None = None) -> Item | None:
        """The agent of `node_id` reports an item done. Returns the item, or None if it was not running
        there: a completion counts only from the node the item was given to, and only once."""
        item = self.items.get(item_id)
        if item is None or item.state != RUNNING or (node_id is not None and item.node_id != node_id):
            return None
        self.recovering.pop(item_id, None)  # reported by its node before that node registered again
        self.room_changed = True
        node = self.nodes.get(item.node_id)
        if node is not None:
            if item_id in node.running:
                self._pool(item, node).give_back(self._held(item), item.gpu_ids)
                node.running.discard(item_id)
                if item.pg_id:  # its bundle has room again
                    self.groups_waiting.add(item.pg_id)
            elif item_id in node.prefetched:
                node.prefetched.remove(item_id)
                node.grew = True  # room to be given more ahead
            node.revoking.discard(item_id)
            while node.prefetched and node.fits(self.items[node.prefetched[0]].request):
                self._hold(node, self.items[node.prefetched.popleft()])  # the agent starts it now too
            if not node.busy:
                node.idle_since = now
        if item.kind == CALL and item.actor_id in self.actors:
            self.actors[item.actor_id].given.pop(item_id, None)
        if state == FINISHED and item.kind == "task":
            s = item.shape
            took = now - item.started_at
            self.task_seconds[s] = took if s not in self.task_seconds else 0.8 * self.task_seconds[s] + 0.2 * took
        if item.restart_requested and state in (CANCELLED, LOST):  # kill(no_restart=False): as if it crashed
            item.restart_requested = False
            self._retry_or_fail(item, now, "it was killed to restart")
            return item
        if state == LOST:  # on a node its cloud is taking back: it costs none of the user's retries
            self._retry_or_fail(item, now, message or "its process died", counted=item.node_id not in self.preempting)
            return item
        if state == REVOKED:  # back to the front of its queue, as if it had never left
            item.state, item.node_id = QUEUED, ""
            self.dirty.add(item.id)
            self.queues.setdefault(item.shape, deque()).appendleft(item.id)
            self.queues.move_to_end(item.shape, last=False)
            self.queued_count[item.shape] = self.queued_count.get(item.shape, 0) + 1
            if node is not None:
                node.no_prefetch_until = now + PREFETCH_PAUSE_S
            return item
        item.exit_code, item.result = exit_code, result
        self._finish(item, state, now, message=message)
        return item

    # --- a task waiting in `get` lends its CPUs ----------------------------------------------------------

    def take_dirty(self) -> list[Item]:
        """The items changed since the last call (the head writes them to its store)."""
        dirty, self.dirty = self.dirty, set()
        return [self.items[i] for i in dirty if i in self.items]

    def forget(self, item_id: str) -> None:
        """A done item leaves memory (its record is in the store)."""
        item = self.items.pop(item_id, None)
        self.infeasible.pop(item_id, None)
        if item is not None and item.parent_id in self.children:
            siblings = self.children[item.parent_id]
            siblings.discard(item_id)
            if not siblings:
                del self.children[item.parent_id]

    def take_finished(self) -> list[str]:
        """Ids of the items done since the last call (the head wakes whoever waits for them)."""
        done, self.finished_ids = self.finished_ids, []
        return done

    def _finish(self, item: Item, state: str, now: float, message: str = "") -> None:
        item.state, item.finished_at = state, now
        self.dirty.add(item.id)
        self.finished_ids.append(item.id)
        if message:
            item.message = message
        if item.kind == CALL:
            actor = self.actors.get(item.actor_id)
            if actor is not None:
                actor.given.pop(item.id, None)
                if (item.seq, item.id) in actor.waiting:
                    actor.waiting.remove((item.seq, item.id))
                    self.calls_ready.add(actor.id)  # the call behind it may go now
        elif item.kind == ACTOR:
            self._actor_ended(item, now)
        elif item.kind == PG and item.id in self.groups:
            group = self.groups.pop(item.id)
            self._release(group, now)
            for item_id in group.queue:
                queued = self.items.get(item_id)
                if queued is not None and queued.state == QUEUED:
                    self._finish(queued, FAILED, now, message=f"its placement group {item.id} {state}")
        for dep_id in sorted(self.dependents.pop(item.id, ())):
            dep = self.items[dep_id]
            if dep.state != BLOCKED:
                continue
            if state == FINISHED:
                dep.depends_on.discard(item.id)
                if not dep.depends_on:
                    self._admit(dep)
            else:
                self._finish(dep, FAILED, now, message=dependency_failed(item.id, state))

    # --- reports ------------------------------------------------------------------------------------

    def demand(self) -> list[tuple[Shape, int]]:
        """Work waiting for resources by shape, for the autoscaler: queued, and given ahead to a node that
        has no room for it yet (it waits there as it would in the queue)."""
        counts = {s: c for s, c in self.queued_count.items() if c > 0}
        for node in self.nodes.values():  # a few per node at most
            for item_id in node.prefetched:
                s = self.items[item_id].shape
                counts[s] = counts.get(s, 0) + 1
        for node_id in self.preempting:  # what runs on a node its cloud is taking back needs a new home
            node = self.nodes.get(node_id)
            for item_id in node.running if node else ():
                s = self.items[item_id].shape
                counts[s] = counts.get(s, 0) + 1
        return list(counts.items())

    def infeasible_demand(self) -> list[tuple[Shape, int, str]]:
        by_shape: dict[Shape, list] = {}
        for item_id, reason in self.infeasible.items():
            entry = by_shape.setdefault(self.items[item_id].shape, [0, reason])
            entry[0] += 1
        return [(s, c, r) for s, (c, r) in by_shape.items()]
