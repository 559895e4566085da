"""The head service's results (runtime/head.py): gets, waiting ones, and the replies.

A waiting get is an async handler on the server's event loop (runtime/loop_server.py): it holds no
thread while it waits, so ten thousand of them cost memory only. Its steps that take the head's lock run
on the loop when the lock is free, else on the loop's few step threads, as do reads of the store."""

from __future__ import annotations

import asyncio

import grpc

from runtime.head_state import (MAX_WAITING_GETS, REFUSALS, SESSION_LIMIT, Waiter, in_step, resolve_future, stored_result,
                                under_lock)
from runtime.limits import MAX_REPLY_BYTES
from runtime.proto import head_pb2 as pb
from runtime.work import stream_of


class ResultWaiting:
    """Clients' gets: results at once, or a wait on the server's loop (at most MAX_WAITING_GETS of them,
    the rest told to ask again), on a call or a session stream; a waiting item's CPUs lent meanwhile. Its
    state is the HeadServicer's (set in HeadServicer.__init__): a part of it, not used alone."""

    async def GetResults(self, request, context):
        return await self._get_results(request, context, admit=True)

    async def Session(self, request_iterator, context):
        """A client's GetResults as messages on one stream: the latency of a `get` without a call's setup.
        At most SESSION_LIMIT open at once; a client refused one uses GetResults."""
        if self.sessions >= SESSION_LIMIT:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many client sessions: use GetResults")
        self.sessions += 1
        try:
            async for request in request_iterator:
                yield pb.SessionReply(reply=await self._get_results(request.get, context))
        finally:
            self.sessions -= 1

    async def _get_results(self, request, context, admit: bool = False) -> pb.GetResultsReply:
        """Waits for a future resolved once enough of its items are done: each item's completion counts
        once (no re-scan of the others, no polling); a client that goes away cancels the wait. `admit`: a
        call waits only while fewer than MAX_WAITING_GETS do; else it is answered at once, busy."""
        loop = asyncio.get_running_loop()
        deadline = None if request.timeout_s < 0 else loop.time() + request.timeout_s
        woken = loop.create_future()
        busy = admit and request.timeout_s != 0 and self.waiting_gets >= MAX_WAITING_GETS
        # counted at once (on the loop): calls arriving together cannot all pass the limit (a session's gets
        # are bounded by SESSION_LIMIT, one at a time each)
        counted = admit and not busy
        self.waiting_gets += counted
        try:
            ids, live, waiter, lent = await under_lock(
                self.lock, context, self._begin_get, request, busy, lambda: loop.call_soon_threadsafe(resolve_future, woken))
            busy = busy and not waiter.done
            try:
                if not waiter.done and not busy and request.timeout_s != 0:
                    await asyncio.wait_for(woken, None if deadline is None else max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:
                pass
            except asyncio.CancelledError:  # the client went away: its wait is undone all the same
                loop.run_in_executor(None, self._end_get, ids, live, waiter, lent, request.caller_id)
                raise
        finally:
            self.waiting_gets -= counted
        if not lent and waiter.done and all(i in waiter.results for i in ids):
            # all of it handed over as it finished (the usual `get`): no lock, no store, no thread
            reply = self._results_reply(ids, waiter.results, REFUSALS)
        else:
            reply = await in_step(context, self._finish_get, ids, live, waiter, lent, request.caller_id)
        reply.busy = busy
        return reply

    def _finish_get(self, ids: list[str], live: list[str], waiter: Waiter, lent: bool, caller_id: str):
        """(a step) The get undone, and its reply."""
        done = self._end_get(ids, live, waiter, lent, caller_id)
        return self._results_reply(done, waiter.results, REFUSALS)

    def _begin_get(self, request, busy: bool, wake) -> tuple[list[str], list[str], Waiter, bool]:
        """(a step) Submits what came with the get, refuses unknown ids, and registers a Waiter for the
        live items unless the get will not wait (busy, or no time to)."""
        if request.submit.specs or request.submit.released:
            self._submit(request.submit, REFUSALS)
        ids = list(dict.fromkeys(request.ids))
        with self.lock:
            absent = [i for i in ids if i not in self.sched.items]
            # a value a live generator task has yet to yield: waited for like a live item
            coming = {i for i in absent if stream_of(i) in self.sched.items}
        # an id neither live nor stored is refused before any wait; with nothing to wait for, reading the
        # results finds it (one read of the store, not two)
        if absent and len(absent) < len(ids):
            unknown = set(absent) - self.store.known(absent) - coming
            if unknown:
                REFUSALS.abort(grpc.StatusCode.NOT_FOUND, f"unknown id {min(unknown)}")
        with self.lock:
            live = [i for i in ids if i in self.sched.items or i in coming]
            want = min(request.num_returns or len(ids), len(ids)) - (len(ids) - len(live))
            waiter = Waiter(max(want, 0), wake)
            waits = want > 0 and not busy and request.timeout_s != 0
            if waits:
                for i in live:
                    self.waiters.setdefault(i, set()).add(waiter)
            # a task (or job) waiting for other work lends its CPUs to it meanwhile
            lent = waits and bool(request.caller_id) and self._lend(request.caller_id)
        return ids, live, waiter, lent

    def _end_get(self, ids: list[str], live: list[str], waiter: Waiter, lent: bool, caller_id: str) -> list[str]:
        """(a step) The get's waiter undone, its lent CPUs taken back; the ids done now."""
        if waiter.done and all(i in waiter.results for i in live):
            # every item it waited for was handed over (and its registration dropped) by _commit
            done = [i for i in ids if i in waiter.results or (i not in live and not self._never_yielded(i))]
        else:
            with self.lock:
                for i in live:
                    waiting = self.waiters.get(i)
                    if waiting is not None:
                        waiting.discard(waiter)
                        if not waiting:
                            del self.waiters[i]
                done = [i for i in ids if i in waiter.results or (
                    i not in self.sched.items and not self._never_yielded(i))]
        if lent:
            with self.lock:
                node_id = self.sched.take_back_cpu(caller_id)
                if node_id is not None:
                    self.nodes[node_id].outbox.put(pb.Assignment(item_id=caller_id, take_back_cpu=True))
        return done

    def _never_yielded(self, item_id: str) -> bool:
        """A generator's value asked for that it has not yielded (and now never will, or not yet): not
        in the reply, which says whether its task is done."""
        return stream_of(item_id) is not None and item_id not in self.sched.items and not self.store.known([item_id])

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
