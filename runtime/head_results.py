"""The head service's results (runtime/head.py): gets, waiting ones, and the replies."""

from __future__ import annotations

import time

import grpc

from runtime.head_state import MAX_BLOCKED_GETS, SESSION_LIMIT, WAIT_CHECK_S, Waiter, stored_result
from runtime.limits import MAX_REPLY_BYTES
from runtime.proto import head_pb2 as pb


class ResultWaiting:
    """Clients' gets: results at once, or a wait on a thread of its own (at most MAX_BLOCKED_GETS of them, the
    rest told to ask again), on a call or a session stream; a waiting item's CPUs lent meanwhile. Its state is
    the HeadServicer's (set in HeadServicer.__init__): a part of it, not used alone."""

    def GetResults(self, request, context):
        return self._get_results(request, context, admit=True)

    def Session(self, request_iterator, context):
        """A client's GetResults as messages on one stream: the latency of a `get` without a call's setup.
        Each session holds a server thread while it lives, so there are at most SESSION_LIMIT; a client
        refused one uses GetResults."""
        with self.lock:
            if self.sessions >= SESSION_LIMIT:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many client sessions: use GetResults")
            self.sessions += 1
        try:
            for request in request_iterator:
                yield pb.SessionReply(reply=self._get_results(request.get, context))
        finally:
            with self.lock:
                self.sessions -= 1

    def _get_results(self, request, context, admit: bool = False) -> pb.GetResultsReply:
        """Waits on an event set once enough of its items are done: each item's completion counts once
        (no re-scan of the others, no polling); a check every few seconds only notices a client that went
        away. `admit`: a call that would hold a thread of its own waits only while fewer than
        MAX_BLOCKED_GETS do; else it is answered at once, busy."""
        if request.submit.specs:
            self._submit(request.submit, context)
        ids = list(dict.fromkeys(request.ids))
        deadline = None if request.timeout_s < 0 else time.monotonic() + request.timeout_s
        with self.lock:
            absent = [i for i in ids if i not in self.sched.items]
        # an id neither live nor stored is refused before any wait; with nothing to wait for, reading the
        # results finds it (one read of the store, not two)
        if absent and len(absent) < len(ids):
            unknown = set(absent) - self.store.known(absent)
            if unknown:
                context.abort(grpc.StatusCode.NOT_FOUND, f"unknown id {min(unknown)}")
        with self.lock:
            live = [i for i in ids if i in self.sched.items]
            want = min(request.num_returns or len(ids), len(ids)) - (len(ids) - len(live))
            waiter = Waiter(max(want, 0))
            if want > 0:
                for i in live:
                    self.waiters.setdefault(i, set()).add(waiter)
            busy = admit and not waiter.event.is_set() and request.timeout_s != 0 and \
                self.blocked_gets >= MAX_BLOCKED_GETS
            blocks = admit and not busy and not waiter.event.is_set()
            self.blocked_gets += blocks
            # a task (or job) waiting for other work lends its CPUs to it meanwhile
            lent = not busy and bool(request.caller_id) and not waiter.event.is_set() and self._lend(request.caller_id)
        try:
            while not waiter.event.is_set() and not busy:
                left = None if deadline is None else deadline - time.monotonic()
                if (left is not None and left <= 0) or not context.is_active():
                    break
                waiter.event.wait(timeout=WAIT_CHECK_S if left is None else min(left, WAIT_CHECK_S))
        finally:
            if blocks:
                with self.lock:
                    self.blocked_gets -= 1
            if waiter.event.is_set() and all(i in waiter.results for i in live):
                # every item it waited for was handed over (and its registration dropped) by _commit
                done = [i for i in ids if i in waiter.results or i not in live]
            else:
                with self.lock:
                    for i in live:
                        waiting = self.waiters.get(i)
                        if waiting is not None:
                            waiting.discard(waiter)
                            if not waiting:
                                del self.waiters[i]
                    done = [i for i in ids if i not in self.sched.items or i in waiter.results]
            if lent:
                with self.lock:
                    node_id = self.sched.take_back_cpu(request.caller_id)
                    if node_id is not None:
                        self.nodes[node_id].outbox.put(pb.Assignment(item_id=request.caller_id, take_back_cpu=True))
        reply = self._results_reply(done, waiter.results, context)
        reply.busy = busy
        return reply

    def _lend(self, caller_id: str) -> bool:
        """(under self.lock) The caller's CPUs count as free on its node (which is told so, ahead of any
        work placed there now) until the caller's `get` returns."""
        node_id = self.sched.lend_cpu(caller_id)
        if node_id is None:
            return False
        self.nodes[node_id].outbox.put(pb.Assignment(item_id=caller_id, lend_cpu=True))
        self._settle(self.clock())
        return True

    def _results_reply(self, done_ids: list[str], known: dict[str, pb.ItemResult], context) -> pb.GetResultsReply:
        """As many results as fit MAX_REPLY_BYTES (at least one); the client asks again for the rest. Read
        from the store outside the head's lock: a done item's row no longer changes. Each result is made
        in the reply itself (made apart, the reply would copy them all once more)."""
        reply, size = pb.GetResultsReply(), 0
        for start in range(0, len(done_ids), 500):
            chunk = done_ids[start:start + 500]
            stored = self.store.results([i for i in chunk if i not in known])
            for item_id in chunk:
                r = known.get(item_id)
                if r is not None:
                    reply.results.append(r)
                    size += r.ByteSize()
                elif item_id in stored:
                    size += stored_result(stored[item_id], reply.results.add).ByteSize()
                else:
                    context.abort(grpc.StatusCode.NOT_FOUND, f"unknown id {item_id}")
                if size > MAX_REPLY_BYTES and len(reply.results) > 1:
                    del reply.results[-1]
                    reply.truncated = True
                    self._fetched(reply.results)
                    return reply
        self._fetched(reply.results)
        return reply
