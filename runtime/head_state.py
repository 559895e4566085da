"""What the head service's parts share (runtime/head.py and head_*.py): its limits, the records of nodes
and of waiting gets, and how a stored result is read."""

from __future__ import annotations

import asyncio
import collections
import logging
import sqlite3
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from runtime.node_config import runtime_dir
from runtime.proto import head_pb2 as pb
from runtime.work import ACTOR, FINISHED, OBJECT, PG, Item, bundle_sum

# The cluster's Python: every node runs the same one (lifecycle/runtime_bundle.py), and a driver's must match it
PYTHON_VERSION = "%d.%d" % sys.version_info[:2]
log = logging.getLogger("launch.runtime.head")

# what writing the store raises when the disk is full or failing (sqlite3: "database or disk is full")
STORE_ERRORS = (sqlite3.Error, OSError)


class StoreUnavailable(Exception):
    """The head's store cannot be written now (a full disk): what changed stays in memory until it can."""

ALIVE, DEAD = "alive", "dead"
# Threads for the head's plain (sync) handlers (heartbeats, registration, submissions, transfers); what
# waits (gets, sessions, work and report streams) holds none (runtime/loop_server.py)
SERVER_THREADS = 2048
SWEEP_EVERY_S = 60.0
ASSIGNMENT_BATCH = 1000
# A waiting get or an open client session costs the head memory only (a few KiB each): past these
# limits a get is answered at once, told to ask again (busy), and a session is refused (the client
# makes calls instead)
MAX_WAITING_GETS = 50_000
SESSION_LIMIT = 10_000


class Refused(Exception):
    """A call refused by a step that runs on a thread: the async handler aborts the call with it."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code, self.details = code, details


class _Refusals:
    """The `context` a step of an async handler is given: the handler's own must be awaited on the loop,
    so this one's abort raises Refused, which in_step passes on."""

    @staticmethod
    def abort(code: grpc.StatusCode, details: str):
        raise Refused(code, details)


REFUSALS = _Refusals()


async def under_lock(lock, context, fn, *args):
    """fn(*args) holding the head's lock: on the loop itself when the lock is free (most calls: a hop to a
    thread and back costs about a sixth of a task's round trip), else on a step thread, so the loop never
    waits for the lock. (Whoever holds it holds it briefly; a heartbeat waits for it all the same.)"""
    if lock.acquire(blocking=False):
        try:
            try:
                return fn(*args)
            finally:
                lock.release()
        except Refused as e:
            await context.abort(e.code, e.details)
    return await in_step(context, fn, *args)


def resolve_future(future: asyncio.Future) -> None:
    """(on the loop) Wakes whoever awaits `future`, unless it is done already (or given up: cancelled)."""
    if not future.done():
        future.set_result(None)


async def in_step(context, fn, *args):
    """fn(*args) on a step thread of the server's loop (runtime/loop_server.py: what takes the head's lock
    or reads the store must not block the loop); a refusal it raises aborts the call."""
    try:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
    except Refused as e:
        await context.abort(e.code, e.details)


def default_state_dir() -> Path:
    """The head's store: kept across head restarts (and `launch up` of the same head)."""
    return runtime_dir() / "head-state"


class Outbox:
    """Assignments waiting for a node's WorkStream, in order; a stream that took some and could not send
    them (it was replaced) puts them back in front. `wake`: the current stream's, called (from any
    thread) when one is put."""

    def __init__(self):
        self.items: collections.deque = collections.deque()
        self.lock = threading.Lock()
        self.wake = None

    def put(self, a: pb.Assignment) -> None:
        with self.lock:
            self.items.append(a)
        self._wake()

    def put_back(self, batch: list[pb.Assignment]) -> None:
        with self.lock:
            self.items.extendleft(reversed(batch))
        self._wake()

    def _wake(self) -> None:
        wake = self.wake
        if wake is not None:
            wake()

    def take(self, most: int, max_bytes: int) -> list[pb.Assignment]:
        """What is waiting now, up to `most` or `max_bytes` (at least one)."""
        with self.lock:
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
    removed: bool = False  # the autoscaler removed it (RemoveNode): its instance is going
    preempt_at: float = 0.0  # > 0: its cloud takes it back then (a notice its heartbeat carried)
    preempt_reason: str = ""
    call_port: int = 0  # where its agent takes actor calls straight (runtime/direct.py); 0: it does not


class Waiter:
    """A GetResults call waiting for `needed` more of its items to be done; `wake` is called (from the
    thread that made it so) once they are."""

    __slots__ = ("needed", "done", "results", "wake")

    def __init__(self, needed: int, wake=None):
        self.needed = needed
        self.done = needed <= 0
        self.wake = wake
        self.results: dict[str, pb.ItemResult] = {}  # handed over as they finish: no read of the store

    def one_done(self, result: pb.ItemResult) -> None:
        self.results[result.id] = result
        self.needed -= 1
        if self.needed <= 0 and not self.done:
            self.done = True
            if self.wake is not None:
                self.wake()


def stored_result(t: tuple, make=pb.ItemResult) -> pb.ItemResult:
    """A result as Store.results reads it, made by `make` (a reply's `results.add` makes it in place)."""
    item_id, state, message, exit_code, node_id, value, error, value_size, stored = t
    return make(id=item_id, state=state, message=message, exit_code=exit_code, node_id=node_id,
                value=value or b"", error=error or b"", value_size=value_size, stored=bool(stored))


def item_of(item_id: str, spec: pb.WorkSpec, now: float) -> Item:
    """The scheduler's item for a submitted spec."""
    bundles = [dict(b.amounts) for b in spec.bundles]
    item = Item(id=item_id, kind=spec.kind, name=spec.name or spec.kind,
                request=bundle_sum(bundles) if spec.kind == PG else dict(spec.request.amounts),
                max_retries=max(spec.max_retries, 0), submitted_at=now, depends_on=set(spec.depends_on),
                actor_id=spec.actor_id, min_actor_attempt=spec.min_actor_attempt, actor_name=spec.actor_name,
                pg_id=spec.pg_id,
                bundle_index=spec.bundle_index if spec.pg_id else -1, bundles=bundles, strategy=spec.strategy,
                owner_id=spec.owner_id if spec.kind == ACTOR else "", parent_id=spec.parent_id)
    if spec.kind == OBJECT:  # a put value: its payload is its result (on the head's disk once uploaded)
        item.result = pb.ItemResult(id=item_id, state=FINISHED, value=spec.payload, value_size=spec.payload_size,
                                    stored=spec.payload_size > 0)
    return item
