"""What the head's scheduler works with (runtime/scheduler.py and its parts): the states of an item, the
items, nodes, actors' lines and placement groups as the scheduler keeps them, and the checks of a request.
Pure data and small functions, no I/O."""

from __future__ import annotations

import math
import re
import sys
from collections import deque
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
# The attempt of an actor call that came straight from its caller to the actor's node (runtime/direct.py): the
# head's attempts start at 0, so a call its caller sends the head's way after a refusal is another item there.
DIRECT_ATTEMPT = -1
OVER = "over"  # the word of a refusal of such a call: the instance it named ended there (not: not there yet)
PREFETCH_MAX_TASK_S = 0.5  # longer tasks gain nothing from a saved round trip, and would wait on one node
# An item given ahead that has not started by then is taken back: what holds the node may be waiting
# for it (a job or task that `get`s it), and another node may be free.
PREFETCH_REVOKE_S = 1.0
PREFETCH_PAUSE_S = 10.0  # after a revoke, that node gets nothing ahead for this long

TASK, JOB, ACTOR, CALL, PG = "task", "job", "actor", "call", "pg"
OBJECT = "object"  # a value a client put (runtime.put): done as it is submitted, its result the payload
KINDS = (TASK, JOB, ACTOR, CALL, PG, OBJECT)
STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")

# Every node has "node:<its id>": 1 (as Ray's "node:<ip>"): work with node affinity asks for a sliver of it.
NODE_RESOURCE = "node:"


def node_resource(node_id: str) -> str:
    return f"{NODE_RESOURCE}{node_id}"


def pinned_node(request) -> str | None:
    """The node a request asks for by affinity, or None."""
    return next((k[len(NODE_RESOURCE):] for k in request if k.startswith(NODE_RESOURCE)), None)


def own_resources(amounts) -> dict[str, float]:
    """A node's resources as its type gives them (not its "node:<id>")."""
    return {k: v for k, v in amounts.items() if not k.startswith(NODE_RESOURCE)}


def yielded_id(task_id: str, index: int) -> str:
    """The id of a generator task's `index`-th value (an object its worker puts as it is yielded)."""
    return f"{task_id}.y{index}"


def stream_of(item_id: str) -> str | None:
    """The generator task whose yielded value `item_id` is, or None."""
    base, mark, n = item_id.rpartition(".y")
    return base if mark and n.isdigit() else None


def dependency_failed(dep_id: str, state: str) -> str:
    """The message of an item that fails because a dependency did (its client raises that one's error)."""
    return f"dependency {dep_id} {state}"


def failed_dependency(message: str) -> str:
    """The dependency an item failed for, from its message (dependency_failed), or ""."""
    words = message.split()
    return words[1] if len(words) == 3 and words[0] == "dependency" and words[2] in ("failed", "cancelled") else ""

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
    min_actor_attempt: int = 0  # call: given to that instance of its actor or a later one only
    actor_name: str = ""  # actor: the name it is found by (get_actor), unique among live actors
    pg_id: str = ""  # runs in this placement group's bundle
    bundle_index: int = -1  # ... that bundle (-1: any of them)
    placed_bundle: int = -1  # the bundle it holds resources of while it runs
    bundles: list[dict[str, float]] = field(default_factory=list)  # pg: its bundles
    strategy: str = ""  # pg
    owner_id: str = ""  # actor: the driver it dies with ("": detached)
    parent_id: str = ""  # the task, call or actor that submitted it (a recursive cancel reaches it)
    restart_requested: bool = False  # actor: killed to be restarted (kill(no_restart=False))

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
    # room came back since the scheduler's last pass (see Scheduler.schedule: a queue no node could take
    # from then is tried on these nodes only)
    grew: bool = False

    @property
    def busy(self) -> bool:
        return bool(self.running or self.prefetched or self.reserved)

    @property
    def load(self) -> int:
        """What it runs, has been given ahead and holds for placement groups (ClusterState's `running`)."""
        return len(self.running) + len(self.prefetched) + len(self.reserved)

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
        self.grew = True
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


def bundle_size(request: dict[str, float]) -> tuple:
    return (request.get("GPU", 0.0), request.get("CPU", 0.0), sum(request.values()))


def bundle_sum(bundles: list[dict[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            total[k] = total.get(k, 0.0) + v
    return total


def place_key(node: Node, request: dict[str, float]):
    """Where an item or bundle goes first among the nodes that can hold it: the node that wastes least (one
    with GPUs or custom resources it does not need comes last), then smaller nodes, so large nodes stay free
    for the work that needs them."""
    wastes_gpu = node.total.get("GPU", 0) > 0 and request.get("GPU", 0) <= 0
    unused_custom = sum(1 for k in node.total if k not in UNIVERSAL and k != "GPU" and k not in request)
    return (wastes_gpu, unused_custom, node.total.get("CPU", 0.0), node.id)
