"""What the head service's parts share (runtime/head.py and head_*.py): its limits, the records of nodes
and of waiting gets, and how a stored result is read."""

from __future__ import annotations

import collections
import logging
import sqlite3
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from runtime.node_config import runtime_dir
from runtime.proto import head_pb2 as pb
from runtime.work import ACTOR, PG, Item, bundle_sum

# The cluster's Python: every node runs the same one (lifecycle/runtime_bundle.py), and a driver's must match it
PYTHON_VERSION = "%d.%d" % sys.version_info[:2]
log = logging.getLogger("launch.runtime.head")

# what writing the store raises when the disk is full or failing (sqlite3: "database or disk is full")
STORE_ERRORS = (sqlite3.Error, OSError)


class StoreUnavailable(Exception):
    """The head's store cannot be written now (a full disk): what changed stays in memory until it can."""

ALIVE, DEAD = "alive", "dead"
# A blocking `get` holds one server thread while it waits (asleep on its own event): enough threads that
# a thousand waiting clients never leave heartbeats, reports or ClusterState without one.
SERVER_THREADS = 2048
WAIT_CHECK_S = 2.0  # how often a waiting GetResults looks whether its client went away
SWEEP_EVERY_S = 60.0
ASSIGNMENT_BATCH = 1000
# client Session streams (each holds a server thread for its life): well below SERVER_THREADS, so agents'
# streams, heartbeats and the autoscaler always find one
SESSION_LIMIT = 512
# GetResults calls let wait at once (each holds a server thread while it waits): more are answered at
# once, told to ask again (busy), so heartbeats, reports and the autoscaler always find a thread, however
# many clients wait (with SESSION_LIMIT, half the threads are kept for them)
MAX_BLOCKED_GETS = SERVER_THREADS // 2 - SESSION_LIMIT


def default_state_dir() -> Path:
    """The head's store: kept across head restarts (and `launch up` of the same head)."""
    return runtime_dir() / "head-state"


class Outbox:
    """Assignments waiting for a node's WorkStream, in order; a stream that took some and could not send
    them (it was replaced) puts them back in front."""

    def __init__(self):
        self.items: collections.deque = collections.deque()
        self.cond = threading.Condition()

    def put(self, a: pb.Assignment) -> None:
        with self.cond:
            self.items.append(a)
            self.cond.notify()

    def put_back(self, batch: list[pb.Assignment]) -> None:
        with self.cond:
            self.items.extendleft(reversed(batch))
            self.cond.notify()

    def take(self, timeout: float, most: int, max_bytes: int) -> list[pb.Assignment]:
        """What is waiting, up to `most` or `max_bytes` (at least one), after up to `timeout` for one."""
        with self.cond:
            if not self.items:
                self.cond.wait(timeout)
            batch, size = [], 0
            while self.items and len(batch) < most and (not batch or size < max_bytes):
                batch.append(self.items.popleft())
                size += batch[-1].ByteSize()
            return batch


@dataclass
class NodeRecord:
    """What the head knows of a node beyond its resources: where it is and whether it is heard from."""

    node_id: str
    node_type: str
    address: str
    is_head: bool
    labels: dict[str, str]
    registered_at: float
    last_heartbeat: float
    state: str = ALIVE
    outbox: Outbox = field(default_factory=Outbox)  # Assignments for its WorkStream
    stream: int = 0  # which of its WorkStreams is current (a re-opened one replaces the one before)


class Waiter:
    """A GetResults call waiting for `needed` more of its items to be done."""

    __slots__ = ("needed", "event", "results")

    def __init__(self, needed: int):
        self.needed = needed
        self.event = threading.Event()
        self.results: dict[str, pb.ItemResult] = {}  # handed over as they finish: no read of the store
        if needed <= 0:
            self.event.set()

    def one_done(self, result: pb.ItemResult) -> None:
        self.results[result.id] = result
        self.needed -= 1
        if self.needed <= 0:
            self.event.set()


def stored_result(t: tuple, make=pb.ItemResult) -> pb.ItemResult:
    """A result as Store.results reads it, made by `make` (a reply's `results.add` makes it in place)."""
    item_id, state, message, exit_code, node_id, value, error, value_size, stored = t
    return make(id=item_id, state=state, message=message, exit_code=exit_code, node_id=node_id,
                value=value or b"", error=error or b"", value_size=value_size, stored=bool(stored))


def item_of(item_id: str, spec: pb.WorkSpec, now: float) -> Item:
    """The scheduler's item for a submitted spec."""
    bundles = [dict(b.amounts) for b in spec.bundles]
    return Item(id=item_id, kind=spec.kind, name=spec.name or spec.kind,
                request=bundle_sum(bundles) if spec.kind == PG else dict(spec.request.amounts),
                max_retries=max(spec.max_retries, 0), submitted_at=now, depends_on=set(spec.depends_on),
                actor_id=spec.actor_id, actor_name=spec.actor_name, pg_id=spec.pg_id,
                bundle_index=spec.bundle_index if spec.pg_id else -1, bundles=bundles, strategy=spec.strategy,
                owner_id=spec.owner_id if spec.kind == ACTOR else "")
