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
  done ones (forget); a dependency that is no longer here is looked up with `done_state`.
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

import math
import re
import sys
from bisect import insort
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from core.shapes import EPS, UNIVERSAL, Shape, shape_of, type_can_run  # noqa: F401  (re-exported)


QUEUED, BLOCKED, RUNNING, FINISHED, FAILED, CANCELLED, INFEASIBLE = (
    "queued", "blocked", "running", "finished", "failed", "cancelled", "infeasible")
# Reported by an agent when the process running an item died under it (killed, OOM, node shutting
# down): a system failure, retried like a node death, never the item's own result.
LOST = "lost"
# Reported by an agent for an item given to it ahead that it gave back unstarted (revoke): queued again
# as it was, no retry spent.
REVOKED = "revoked"
DONE_STATES = (FINISHED, FAILED, CANCELLED)
PREFETCH_MAX_TASK_S = 0.5  # longer tasks gain nothing from a saved round trip, and would wait on one node
# An item given ahead that has not started by then is taken back: what holds the node may be waiting
# for it (a job or task that `get`s it), and another node may be free.
PREFETCH_REVOKE_S = 1.0
PREFETCH_PAUSE_S = 10.0  # after a revoke, that node gets nothing ahead for this long

TASK, JOB, ACTOR, CALL, PG = "task", "job", "actor", "call", "pg"
KINDS = (TASK, JOB, ACTOR, CALL, PG)
STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")

class InvalidRequest(ValueError):
    pass


def fmt_request(request: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(request.items())) + "}"


# A resource's name: a word of letters, digits and `_ . : + -` (accelerator_type:T4, node:10.0.0.5), no
# path, blank or control character; a request names a bounded number of them.
RESOURCE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:+-]{0,99}")
MAX_RESOURCES_PER_REQUEST = 32


def validate_request(request: dict[str, float]) -> None:
    if len(request) > MAX_RESOURCES_PER_REQUEST:
        raise InvalidRequest(f"resources: at most {MAX_RESOURCES_PER_REQUEST} kinds per request (got {len(request)})")
    for k, v in request.items():
        if not isinstance(k, str) or not RESOURCE_NAME.fullmatch(k):
            raise InvalidRequest(f"resource name {str(k)[:40]!r}: must be 1-100 letters, digits, '_', '.', ':', "
                                 "'+' or '-', not starting with a symbol")
        if not 0 <= v < math.inf:
            raise InvalidRequest(f"resource {k}: must be a finite number >= 0 (got {v})")
    g = request.get("GPU", 0.0)
    if g > 1 and abs(g - round(g)) > EPS:
        raise InvalidRequest(f"GPU: more than one GPU must be a whole number (got {g})")


# slots: a queue of 100,000 items is a tenth lighter; Python 3.9 (a node's own Python may be) has none
@dataclass(**({"slots": True} if sys.version_info >= (3, 10) else {}))
class Item:
    id: str
    kind: str
    name: str
    request: dict[str, float]
    max_retries: int
    submitted_at: float
    depends_on: set[str] = field(default_factory=set)
    state: str = QUEUED
    node_id: str = ""
    gpu_ids: list[str] = field(default_factory=list)
    attempt: int = 0
    # attempts given to a node that never got them (the head restarted before sending them): retried
    # without counting against max_retries (kept in memory only: a later head restart forgets them)
    undelivered: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0
    exit_code: int = 0
    message: str = ""
    result: object = None  # the ItemResult reported by the agent; opaque here
    cancel_requested: bool = False
    lent_cpu: float = 0.0  # CPUs it gave back while it waits in a `get` (lend_cpu), to take again after
    seq: int = 0  # submission order (an actor's calls run in it)
    actor_id: str = ""  # call: the actor it runs on
    actor_name: str = ""  # actor: the name it is found by (get_actor), unique among live actors
    pg_id: str = ""  # runs in this placement group's bundle
    bundle_index: int = -1  # ... that bundle (-1: any of them)
    placed_bundle: int = -1  # the bundle it holds resources of while it runs
    bundles: list[dict[str, float]] = field(default_factory=list)  # pg: its bundles
    strategy: str = ""  # pg
    owner_id: str = ""  # actor: the driver it dies with ("": detached)

    @property
    def shape(self) -> Shape:
        return shape_of(self.request)


@dataclass
class Node:
    id: str
    node_type: str
    total: dict[str, float]
    is_head: bool = False
    available: dict[str, float] = field(default_factory=dict)
    gpu_free: dict[str, float] = field(default_factory=dict)  # gpu id -> free fraction
    running: set[str] = field(default_factory=set)  # holding resources
    prefetched: deque[str] = field(default_factory=deque)  # given ahead; started by the agent in order
    draining: bool = False
    alive: bool = True
    idle_since: float = 0.0
    no_prefetch_until: float = 0.0
    revoking: set[str] = field(default_factory=set)  # prefetched items asked back
    reserved: set[tuple[str, int]] = field(default_factory=set)  # (pg id, bundle index) held here

    @property
    def busy(self) -> bool:
        return bool(self.running or self.prefetched or self.reserved)

    def fits(self, request: dict[str, float]) -> bool:
        if not all(self.available.get(k, 0.0) + EPS >= v for k, v in request.items()):
            return False
        g = request.get("GPU", 0.0)
        if g >= 1:
            return sum(1 for f in self.gpu_free.values() if f >= 1 - EPS) >= round(g)
        if g > 0:
            return any(f + EPS >= g for f in self.gpu_free.values())
        return True

    def take_gpus(self, g: float) -> list[str]:
        if g <= 0:
            return []
        if g >= 1:
            ids = [i for i, f in self.gpu_free.items() if f >= 1 - EPS][: round(g)]
            for i in ids:
                self.gpu_free[i] = 0.0
            return ids
        # a fraction goes to the most-used GPU it still fits on, keeping whole GPUs whole
        i = min((i for i, f in self.gpu_free.items() if f + EPS >= g), key=lambda i: (self.gpu_free[i], i))
        self.gpu_free[i] -= g
        return [i]

    def take(self, request: dict[str, float]) -> list[str]:
        """Hold `request` here; returns the GPUs it gets (give_back returns them)."""
        for k, v in request.items():
            self.available[k] = self.available.get(k, 0.0) - v
        return self.take_gpus(request.get("GPU", 0.0))

    def give_back(self, request: dict[str, float], gpu_ids: list[str]) -> None:
        for k, v in request.items():
            self.available[k] = min(self.total.get(k, 0.0), self.available.get(k, 0.0) + v)
        g = request.get("GPU", 0.0)
        share = 1.0 if g >= 1 else g
        for i in gpu_ids:
            self.gpu_free[i] = min(1.0, self.gpu_free.get(i, 0.0) + share)


@dataclass
class Actor:
    """An actor's line of calls: waiting ones by submission order, and those its instance was given."""

    id: str
    waiting: list[tuple[int, str]] = field(default_factory=list)  # (seq, call id), sorted
    given: dict[str, int] = field(default_factory=dict)  # call id -> seq


@dataclass
class Bundle:
    """A reserved bundle: a pool of its own on its node (`pool` counts what the work in it holds)."""

    index: int
    request: dict[str, float]
    node_id: str = ""
    pool: Node | None = None


@dataclass
class Group:
    id: str
    strategy: str
    bundles: list[Bundle]
    queue: deque[str] = field(default_factory=deque)  # work submitted into it, waiting for room

    @property
    def placed(self) -> bool:
        return all(b.node_id for b in self.bundles)


def group_problem(bundles: list[dict[str, float]], strategy: str) -> str | None:
    """Why a placement group request is malformed (None: it is not)."""
    if strategy not in STRATEGIES:
        return f"strategy must be one of {', '.join(STRATEGIES)} (got {strategy!r})"
    if not bundles:
        return "a placement group needs at least one bundle"
    for i, b in enumerate(bundles):
        try:  # a negative amount is named as such, before the bundle is judged empty
            validate_request(b)
        except InvalidRequest as e:
            return f"bundle {i}: {e}"
        if not any(v > 0 for v in b.values()):
            return f"bundle {i} is empty"
    return None


def _bundle_size(request: dict[str, float]) -> tuple:
    return (request.get("GPU", 0.0), request.get("CPU", 0.0), sum(request.values()))


def bundle_sum(bundles: list[dict[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            total[k] = total.get(k, 0.0) + v
    return total


class Scheduler:
    def __init__(self, node_types: dict[str, dict[str, float]] | None = None,
                 done_state: Callable[[str], str | None] = lambda item_id: None):
        self.node_types = node_types or {}
        self.done_state = done_state  # the state of a done item already forgotten here; None: unknown
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

    # --- nodes --------------------------------------------------------------------------------------

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
        n_gpu = int(total.get("GPU", 0))
        ids = gpu_ids if gpu_ids else [str(i) for i in range(n_gpu)]
        node = self.nodes[node_id] = Node(node_id, node_type, dict(total), is_head, dict(total),
                                          {i: 1.0 for i in ids[:n_gpu]}, idle_since=now)
        self.room_changed = True
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

    def _forget_node(self, node_id: str, now: float) -> None:
        """The node's record goes; what it was counted to run waits for it like work after a head restart
        (add_node adopts what it still runs), and its bundles' groups are placed again."""
        old = self.nodes.pop(node_id)
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
        """The node is gone: its items go back to the queue, or fail once out of retries."""
        node = self.nodes.pop(node_id, None)
        if node is None:
            return []
        for pg_id in sorted({g for g, _ in node.reserved}):  # a group with a bundle here is placed again
            self._unplace(self.groups[pg_id], now)
        touched = []
        for item_id in sorted(node.running) + list(node.prefetched):
            item = self.items[item_id]
            if item.state == RUNNING and item.node_id == node_id:
                self._retry_or_fail(item, now, f"{reason} ({node_id})")
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

    def drain(self, node_id: str, undrain: bool = False) -> tuple[bool, int]:
        """Stop (or, undrain, resume) giving the node new work. Returns (drained: nothing runs, running)."""
        node = self.nodes.get(node_id)
        if node is None:
            return True, 0
        node.draining = not undrain
        self.room_changed = self.room_changed or undrain
        busy = len(node.running) + len(node.prefetched) + len(node.reserved)
        return not busy and not undrain, busy

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
        return item.state if item is not None else self.done_state(item_id)

    def submit(self, item: Item, now: float) -> None:
        validate_request(item.request)
        self._order += 1
        item.seq = self._order
        self.items[item.id] = item
        self.dirty.add(item.id)
        if item.kind == ACTOR:
            self._register_actor(item)
        elif item.kind == PG:
            self.groups[item.id] = Group(item.id, item.strategy, [Bundle(i, dict(b)) for i, b in enumerate(item.bundles)])
        elif item.kind == CALL:
            if item.actor_id not in self.actors:
                state = self.state_of(item.actor_id)
                self._finish(item, FAILED, now, message=f"its actor {item.actor_id} is "
                             f"{'unknown' if state is None else 'dead (' + state + ')'}")
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
            self._finish(item, FAILED, now, message=f"dependency {failed_dep} {dep_states[failed_dep]}")
            return
        pending = {d for d, s in dep_states.items() if s != FINISHED}
        if pending:
            item.state = BLOCKED
            for d in pending:
                self.dependents.setdefault(d, set()).add(item.id)
            item.depends_on = pending
            return
        self._admit(item)

    def _register_actor(self, item: Item) -> None:
        self.actors[item.id] = Actor(item.id)
        if item.actor_name:
            self.actor_names[item.actor_name] = item.id

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

    @staticmethod
    def _bundle_problem(group: Group, item: Item) -> str | None:
        if item.bundle_index >= len(group.bundles):
            return f"placement group {group.id} has no bundle {item.bundle_index} (it has {len(group.bundles)})"
        wanted = [group.bundles[item.bundle_index]] if item.bundle_index >= 0 else group.bundles
        if any(all(b.request.get(k, 0.0) + EPS >= v for k, v in item.request.items()) for b in wanted):
            return None
        where = f"bundle {item.bundle_index}" if item.bundle_index >= 0 else "any bundle"
        return f"{fmt_request(item.request)} does not fit {where} of placement group {group.id}"

    def _recheck_infeasible(self) -> None:
        for item_id in list(self.infeasible):
            item = self.items[item_id]
            if self._infeasible(item) is None:
                del self.infeasible[item_id]
                item.message = ""
                item.state = QUEUED
                self._enqueue(item)

    # --- placement ----------------------------------------------------------------------------------

    def _place_key(self, node: Node, request: dict[str, float]):
        wastes_gpu = node.total.get("GPU", 0) > 0 and request.get("GPU", 0) <= 0
        unused_custom = sum(1 for k in node.total if k not in UNIVERSAL and k != "GPU" and k not in request)
        return (wastes_gpu, unused_custom, node.total.get("CPU", 0.0), node.id)

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
            candidates = sorted((n for n in self.nodes.values() if n.alive and not n.draining),
                                key=lambda n: self._place_key(n, request))
            while q:
                item = self.items.get(q[0])
                if item is None or item.state != QUEUED:  # cancelled while queued: dropped lazily
                    q.popleft()
                    continue
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
            if not q:
                del self.queues[s]
                self.queued_count.pop(s, None)
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

    def _hand_out_calls(self, now: float) -> list[Item]:
        """Each placed actor's calls, in submission order, up to the first that waits on a dependency."""
        out = []
        ready, self.calls_ready = self.calls_ready, set()
        for actor_id in sorted(ready):
            actor, a = self.actors.get(actor_id), self.items.get(actor_id)
            if actor is None or a is None or a.state != RUNNING or actor_id in self.recovering:
                continue  # not placed (again) yet: its calls wait; placing it marks it ready
            while actor.waiting:
                seq, call_id = actor.waiting[0]
                call = self.items[call_id]
                if call.state != QUEUED:
                    break
                actor.waiting.pop(0)
                actor.given[call_id] = seq
                call.state, call.node_id, call.started_at = RUNNING, a.node_id, now
                self.dirty.add(call_id)
                out.append(call)
        return out

    def calls_given_on(self, node: Node) -> list[str]:
        """The calls handed to the actors running on the node, in the order they were submitted."""
        given = [(seq, c) for a in node.running if a in self.actors for c, seq in self.actors[a].given.items()]
        return [c for _, c in sorted(given)]

    def actor_by_name(self, name: str) -> Item | None:
        actor_id = self.actor_names.get(name)
        return self.items.get(actor_id) if actor_id else None

    # --- placement groups ---------------------------------------------------------------------------

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

        bundles = sorted(group.bundles, key=lambda b: _bundle_size(b.request), reverse=True)
        total = bundle_sum([b.request for b in group.bundles])
        placement: dict[int, str] = {}
        if group.strategy in ("STRICT_PACK", "PACK"):
            for n in sorted(nodes, key=lambda n: self._place_key(n, total)):
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
            fresh = sorted((n for n in nodes if n.id not in used), key=lambda n: self._place_key(n, b.request))
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
        options = [sorted((n for n in nodes if n.fits(b.request)), key=lambda n: self._place_key(n, b.request))
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

    def _prefetchable(self, s: Shape, item: Item | None) -> bool:
        return (item is not None and item.kind == "task" and not item.request.get("GPU")
                and self.task_seconds.get(s, PREFETCH_MAX_TASK_S) < PREFETCH_MAX_TASK_S)

    def _prefetch(self, s: Shape, q: deque[str], candidates: list[Node], now: float) -> list[Item]:
        request = dict(s)
        given = []
        # enough to keep each CPU busy over a round trip to the head (a few ms): more for shorter tasks
        t = self.task_seconds[s]
        depth = 8 if t < 0.01 else 2 if t < 0.1 else 1
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
        if state == LOST:
            self._retry_or_fail(item, now, message or "its process died")
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

    def cancel(self, item_id: str, now: float) -> tuple[str, str | None]:
        """Returns (state, node to tell to stop the item or None). Cancelling an actor kills it; a placement
        group, removes it (the nodes to tell are in to_stop)."""
        item = self.items.get(item_id)
        if item is None:
            raise KeyError(item_id)
        if item.kind == PG and item.id in self.groups:
            self._remove_group(self.groups[item.id], now)
            return CANCELLED, None
        if item.state in (QUEUED, BLOCKED, INFEASIBLE):
            if item.state == QUEUED and item.kind != CALL and not item.pg_id:
                self.queued_count[item.shape] -= 1
            self.infeasible.pop(item_id, None)
            self._finish(item, CANCELLED, now, message="cancelled")
            return CANCELLED, None
        if item.state == RUNNING:
            item.cancel_requested = True
            return RUNNING, item.node_id
        return item.state, None

    # --- a task waiting in `get` lends its CPUs ----------------------------------------------------------

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

    def take_dirty(self) -> list[Item]:
        """The items changed since the last call (the head writes them to its store)."""
        dirty, self.dirty = self.dirty, set()
        return [self.items[i] for i in dirty if i in self.items]

    def forget(self, item_id: str) -> None:
        """A done item leaves memory (its record is in the store)."""
        self.items.pop(item_id, None)
        self.infeasible.pop(item_id, None)

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
                self._finish(dep, FAILED, now, message=f"dependency {item.id} {state}")

    def _actor_ended(self, item: Item, now: float) -> None:
        """The actor is done (killed, failed, out of restarts): the calls in its line fail."""
        actor = self.actors.pop(item.id, None)
        if self.actor_names.get(item.actor_name) == item.id:
            del self.actor_names[item.actor_name]
        self.calls_ready.discard(item.id)
        if actor is None:
            return
        why = {CANCELLED: "was killed", FAILED: "died"}.get(item.state, item.state)
        for _, call_id in sorted([*actor.waiting, *((s, c) for c, s in actor.given.items())]):
            call = self.items.get(call_id)
            if call is not None and call.state not in DONE_STATES:
                self._finish(call, FAILED, now,
                             message=f"its actor {item.id} {why}" + (f": {item.message}" if item.message else ""))

    # --- reports ------------------------------------------------------------------------------------

    def demand(self) -> list[tuple[Shape, int]]:
        """Work waiting for resources by shape, for the autoscaler: queued, and given ahead to a node that
        has no room for it yet (it waits there as it would in the queue)."""
        counts = {s: c for s, c in self.queued_count.items() if c > 0}
        for node in self.nodes.values():  # a few per node at most
            for item_id in node.prefetched:
                s = self.items[item_id].shape
                counts[s] = counts.get(s, 0) + 1
        return list(counts.items())

    def infeasible_demand(self) -> list[tuple[Shape, int, str]]:
        by_shape: dict[Shape, list] = {}
        for item_id, reason in self.infeasible.items():
            entry = by_shape.setdefault(self.items[item_id].shape, [0, reason])
            entry[0] += 1
        return [(s, c, r) for s, (c, r) in by_shape.items()]
