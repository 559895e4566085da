"""Actor calls straight from their caller to the agent of the actor's node (runtime/agent_calls.py).

Through the head a call takes four hops (caller, head, agent, head, caller) and two of the head's
transactions; straight it takes two, as in Ray. A process on the cluster's network (not one that reaches the
head through an SSH tunnel) sends a call straight when the call is plain: its actor's place is known (asked
of the head once), it passes no ref as an argument of its own (those wait on the head), its payload fits a
message, it returns one value, and every call this process sent the head's way to that actor has been seen
done. Otherwise the call goes the head's way, as before.

What stays true, as through the head:
- Order. A process's calls of one actor run in the order it made them: it sends straight only once its
  calls sent the head's way are done, and sends the head's way only once its calls sent straight are
  answered (a call that then waits for an earlier one blocks `.remote()` until that one is answered).
- An outcome for every call. The agent answers each: done (its result), refused (never run: the instance it
  was sent to is not there, or ended before running it) or died (the actor's process died while it ran).
  A refused call is sent the head's way, in order, and runs on the actor's next instance at no cost; a call
  that died is sent again while its max_task_retries allow, else it fails with ActorDiedError. A stream that
  breaks (the node gone) counts as died for every call on it not answered.
- Anyone may get the value. The agent reports every call it ran to the head, with what the call was; and
  before a ref of a call sent straight leaves this process (pickled into another call, a task, a put), this
  process waits for the call's outcome and hands it to the head first, in order with what it submits, so
  the head never meets an id it does not know. A process that waits on the ref itself asks nobody.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
import uuid
from collections import OrderedDict

import grpc

from runtime.limits import GRPC_OPTIONS, INLINE_BYTES
from runtime.proto import head_pb2 as pb
from runtime.proto import head_pb2_grpc as pb_grpc
from runtime.work import OVER

DIRECT_CALLS_ENV = "LAUNCH_DIRECT_CALLS"  # "0": every call goes by the head
CONNECT_S = 2.0  # an agent not reached within this is not tried again for UNREACHABLE_S (calls go by the head)
UNREACHABLE_S = 60.0
RESUMES = 3  # a call asked for again on this many new streams, all of which broke, counts as died
REQUEST_BATCH = 1000  # calls in one message at most (and about INLINE_BYTES of them)
NO_PLACE_S = 1.0  # an actor the head says is placed where calls cannot go straight: asked again after this
PROBE_S, PROBE_IDS = 1.0, 1000  # calls sent by the head and not seen done: the head asked about them this often


def enabled() -> bool:
    """(callers, and the node agents that take their calls)"""
    return os.environ.get(DIRECT_CALLS_ENV, "1") != "0"


# a stream whose peer went silent (its machine gone) breaks after these: its calls count as died. Pinged
# while no data moves too (a call running for minutes), which the agent allows (runtime/agent_calls.py).
KEEPALIVE = [("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000),
             ("grpc.http2.max_pings_without_data", 0)]


class Pending:
    """A call sent straight: its outcome once this process has it (`result`), or `moved`: sent the head's way."""

    __slots__ = ("id", "spec", "route", "attempt", "event", "result", "moved", "adopted", "resumes")

    def __init__(self, item_id: str, spec: pb.WorkSpec, route: Route, attempt: int):
        self.id, self.spec, self.route, self.attempt = item_id, spec, route, attempt  # (attempt: the instance's)
        self.resumes = 0  # how often it was asked for again on a new stream
        self.event = threading.Event()
        self.result: pb.ItemResult | None = None
        self.moved = False
        self.adopted = False  # its outcome was handed to the head


class Route:
    """This process's calls of one actor."""

    def __init__(self, actor_id: str):
        self.actor_id = actor_id
        self.lock = threading.RLock()
        self.answered = threading.Condition(self.lock)  # a call sent straight was answered
        self.place: tuple[str, int] | None = None  # (the agent's host:port, the instance's attempt)
        self.no_place_until = 0.0
        self.head_pending: set[str] = set()  # sent the head's way, not seen done here yet
        self.probed = time.monotonic()  # when the head was last asked which of those are done
        self.inflight: OrderedDict[str, Pending] = OrderedDict()  # sent straight, not answered yet


class _Stream:
    """One stream of calls to one agent, and the thread that reads its answers."""

    def __init__(self, owner: DirectCalls, address: str, channel: grpc.Channel):
        self.owner, self.address, self.channel = owner, address, channel
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self.calls: dict[str, Pending] = {}  # sent on it, not answered
        self.broken = False

        def requests():  # every call ready when the last message went, in one message
            while (r := self.requests.get()) is not None:
                batch = pb.CallRequests(calls=[r])
                size = r.ByteSize()
                while size < INLINE_BYTES and len(batch.calls) < REQUEST_BATCH:
                    try:
                        r = self.requests.get_nowait()
                    except queue.Empty:
                        break
                    if r is None:
                        yield batch
                        return
                    batch.calls.append(r)
                    size += r.ByteSize()
                yield batch

        stub = pb_grpc.AgentStub(channel)
        self.replies = stub.Calls(requests(), metadata=owner.metadata)
        threading.Thread(target=self._read, name="launch-direct-calls", daemon=True).start()

    def send(self, request: pb.CallRequest, pending: Pending | None) -> None:
        if pending is not None:
            self.calls[pending.id] = pending
        self.requests.put(request)

    def _read(self) -> None:
        try:
            for replies in self.replies:
                for reply in replies.replies:
                    pending = self.calls.pop(reply.id, None)
                    if pending is not None:
                        self.owner.answered(pending, reply.outcome, reply.result)
        except grpc.RpcError:
            pass
        self.owner.stream_broken(self)

    def close(self) -> None:
        self.requests.put(None)
        self.channel.close()


class DirectCalls:
    """This process's calls sent straight, per actor; made by the API's connection (runtime/api.py)."""

    def __init__(self, conn, metadata, allowed: bool, submit, reconnecting):
        """submit, reconnecting: the API's (runtime/api.py `_submit`, `_reconnecting`), which uses this."""
        self.conn, self.submit, self.reconnecting = conn, submit, reconnecting
        self.metadata = metadata
        self.on = allowed and enabled()
        self.closed = False
        self.lock = threading.Lock()  # routes, streams, head_ids
        self.routes: dict[str, Route] = {}
        self.streams: dict[str, _Stream] = {}
        self.unreachable: dict[str, float] = {}  # agent address -> until when calls go by the head
        self.head_ids: dict[str, Route] = {}  # calls sent the head's way -> their route (until seen done)
        self.done = threading.Condition()  # any call sent straight answered (a `wait` on several)
        self.prefix, self.numbers = uuid.uuid4().hex[:16], itertools.count()  # this process's call ids
        os.register_at_fork(after_in_child=self._new_prefix)  # (a forked child makes ids of its own)

    def _new_prefix(self) -> None:
        self.prefix, self.numbers = uuid.uuid4().hex[:16], itertools.count()

    def _route(self, actor_id: str) -> Route:
        with self.lock:
            route = self.routes.get(actor_id)
            if route is None:
                route = self.routes[actor_id] = Route(actor_id)
            return route

    # --- sending --------------------------------------------------------------------------------------

    def call(self, actor_id: str, name: str, payload: bytes, deps: list[str], retries: int,
             parent_id: str, plain: bool) -> tuple[str, Pending | None]:
        """A call's id, sent straight if it can be, else the head's way (api._submit). `plain`: it returns one
        value (not several, not a stream)."""
        route = self._route(actor_id)
        with route.lock:
            if route.head_pending and self.on and time.monotonic() - route.probed > PROBE_S:
                self._probe(route)
            straight = self.on and plain and not deps and len(payload) <= INLINE_BYTES and not route.head_pending
            stream = self._stream_for(route) if straight else None
            if stream is not None:
                item_id = f"c-{self.prefix}{next(self.numbers):x}"  # (unique: a uuid4 each cost 6% of a call)
                spec = pb.WorkSpec(kind="call", name=name, actor_id=actor_id, max_retries=retries,
                                   parent_id=parent_id, payload=payload)
                pending = Pending(item_id, spec, route, route.place[1])
                route.inflight[item_id] = pending
                stream.send(pb.CallRequest(id=item_id, spec=spec, actor_attempt=route.place[1]), pending)
                return item_id, pending
            while route.inflight:  # the calls sent straight go first
                route.answered.wait()
            item_id = self.submit("call", name, {}, payload, deps, retries, "c", actor_id=actor_id)
            self._sent_by_head(route, item_id)
            return item_id, None

    def _probe(self, route: Route) -> None:
        """(under route.lock) Calls sent by the head that this process never looked at again (their refs
        dropped, or not gotten yet): the head says which are done, so they hold the next ones back no more."""
        route.probed = time.monotonic()
        ids = sorted(route.head_pending)[:PROBE_IDS]
        self.conn.settle()
        try:
            done = self.conn.client.get_results(ids, 0)
        except grpc.RpcError:  # (one refused, or the head away: asked again later)
            return
        self.seen_done([r.id for r in done])

    def _sent_by_head(self, route: Route, item_id: str) -> None:
        """(under route.lock)"""
        route.head_pending.add(item_id)
        with self.lock:
            self.head_ids[item_id] = route

    def forget_place(self, actor_id: str) -> None:
        """(the actor was killed here) Its next calls ask the head again, which says it is dead."""
        route = self._route(actor_id)
        with route.lock:
            route.place = None

    def seen_done(self, ids) -> None:
        """(get, wait) These are done: calls sent the head's way among them no longer hold the next ones back."""
        if not self.head_ids:
            return
        with self.lock:
            routes = [(i, self.head_ids.pop(i)) for i in ids if i in self.head_ids]
        for item_id, route in routes:
            with route.lock:
                route.head_pending.discard(item_id)

    def _stream_for(self, route: Route) -> _Stream | None:
        """(under route.lock) The stream to the agent of the actor's node, asking the head where that is if need
        be; None: the call goes by the head."""
        if route.place is None:
            if time.monotonic() < route.no_place_until:
                return None
            route.place = self._look_up(route)
            if route.place is None:
                return None
        address = route.place[0]
        with self.lock:
            stream = self.streams.get(address)
            if stream is not None and not stream.broken:
                return stream
            if self.unreachable.get(address, 0.0) > time.monotonic():
                return None
        return self._connect(address)

    def _connect(self, address: str) -> _Stream | None:
        """A new stream to an agent; None if it does not answer within CONNECT_S (then not tried again for
        UNREACHABLE_S)."""
        channel = grpc.insecure_channel(address, options=GRPC_OPTIONS + KEEPALIVE)
        try:
            grpc.channel_ready_future(channel).result(timeout=CONNECT_S)
        except grpc.FutureTimeoutError:
            channel.close()
            with self.lock:
                self.unreachable[address] = time.monotonic() + UNREACHABLE_S
            return None
        stream = _Stream(self, address, channel)
        with self.lock:
            self.streams[address] = stream
        return stream

    def _look_up(self, route: Route) -> tuple[str, int] | None:
        """Where the actor runs, if its calls can go straight there. Not yet placed (or not yet known to the
        head: its submission is on the way): this call goes the head's way, and the next are asked again once
        it is seen done; placed where calls cannot go straight: not asked again for NO_PLACE_S."""
        try:
            reply = self.conn.client.get_actor_place(route.actor_id)
        except grpc.RpcError:
            return None
        if reply.call_address:
            return reply.call_address, reply.attempt
        if reply.state == "running":
            route.no_place_until = time.monotonic() + NO_PLACE_S
        return None

    # --- answers --------------------------------------------------------------------------------------

    def answered(self, pending: Pending, outcome: str, result: pb.ItemResult | None, broken: bool = False) -> None:
        """(the stream's reader) An agent's answer: done, or what comes next for a call refused or died.
        `broken`: no answer came (the stream broke), and the node may have reported it done to the head."""
        route = pending.route
        with route.lock:
            if self.closed or route.inflight.pop(pending.id, None) is None:
                return  # (answered already: its stream broke before; or this process is leaving the cluster)
            if outcome == "done":
                pending.result = result
            else:
                route.place = None  # the instance it was sent to is over there: ask the head again
                if outcome == "refused":  # never run: the head's way, at no cost (to that instance if it was
                    # not there yet, else to the next)
                    over = result is not None and result.message == OVER
                    self._move(route, pending, pending.spec.max_retries, after=pending.attempt + 1 if over else 0)
                elif pending.spec.max_retries > 0:  # died: run again while its retries allow
                    self._move(route, pending, pending.spec.max_retries - 1, pending.attempt + 1, broken)
                else:
                    why = (result.message if result is not None and result.message else "died")
                    pending.result = pb.ItemResult(id=pending.id, state="failed", message=(
                        f"its actor {route.actor_id} {why} while this call ran, and it has no retries left"))
            pending.event.set()
            route.answered.notify_all()
        with self.done:
            self.done.notify_all()

    def _move(self, route: Route, pending: Pending, retries: int, after: int, maybe_known: bool = False) -> None:
        """(under route.lock) A call sent straight goes the head's way, behind what this process sent before,
        to instance `after` of its actor or a later one (not to one that is over, which the head may not know
        yet). `maybe_known`: its node may have reported it done before it went silent; then it is submitted
        alone (after what is queued), and the head's 'used twice' means that it has it."""
        spec = pb.WorkSpec()
        spec.CopyFrom(pending.spec)
        spec.max_retries = retries
        spec.min_actor_attempt = after
        self._sent_by_head(route, pending.id)
        # `moved` only once it is on its way to the head: a `get` or `wait` that reads it asks the head next
        if not maybe_known:
            self.conn.enqueue(pending.id, spec)
            pending.moved = True
            return
        self.conn.settle()
        try:
            self.reconnecting(lambda: self.conn.client.submit_many([spec], [pending.id]))
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.ALREADY_EXISTS:
                pending.result = pb.ItemResult(id=pending.id, state="failed", message=(
                    f"its actor {route.actor_id}'s node went silent while this call ran, and the head "
                    f"refused it again: {e.details()}"))
                return
        pending.moved = True

    def stream_broken(self, stream: _Stream) -> None:
        """The stream failed. If its agent answers again, the calls on it not answered are asked for on a new
        stream (the agent runs them on, and keeps the latest answers); if not (its node or agent is gone),
        each counts as died."""
        stream.broken = True
        with self.lock:
            if self.streams.get(stream.address) is stream:
                del self.streams[stream.address]
        stream.channel.close()
        left = list(stream.calls.values())
        stream.calls.clear()
        again = self._connect(stream.address) if left and not self.closed else None
        for pending in left:
            pending.resumes += 1
            if again is not None and pending.resumes <= RESUMES:
                again.send(pb.CallRequest(id=pending.id, resume=True), pending)
            else:
                self.answered(pending, "died", None, broken=True)

    # --- a ref of a call sent straight ---------------------------------------------------------------

    def hand_over(self, pending: Pending) -> None:
        """Before its ref leaves this process: the outcome, once here, goes to the head first (in order with
        what this process submits), unless the call went the head's way."""
        pending.event.wait()
        if pending.moved or pending.adopted:
            return
        pending.adopted = True
        spec = pb.WorkSpec(kind="call", name=pending.spec.name, actor_id=pending.spec.actor_id,
                           parent_id=pending.spec.parent_id)
        spec.outcome.CopyFrom(pending.result)
        self.conn.enqueue(pending.id, spec)

    def cancel(self, pending: Pending) -> None:
        with self.lock:
            stream = next((s for s in self.streams.values() if pending.id in s.calls), None)
        if stream is not None:
            stream.send(pb.CallRequest(id=pending.id, cancel=True), None)

    def close(self) -> None:
        self.closed = True
        with self.lock:
            streams, self.streams = list(self.streams.values()), {}
        for stream in streams:
            stream.close()
