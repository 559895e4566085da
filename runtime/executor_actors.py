"""Actors, as a node's executor (runtime/executor.py) runs them."""

from __future__ import annotations


import threading
from collections.abc import Callable

import cloudpickle

from runtime.executor_tasks import task_context
from runtime.processes import ActorInstance, Worker, WorkerDied
from runtime.runtime_env import RuntimeEnvSetupFailed
from runtime.proto import head_pb2 as pb
from runtime.work import DIRECT_ATTEMPT, OVER

ACTOR_CHECK_S = 1.0  # how often an idle actor's process is looked at
READER_END_S = 5.0  # how long an actor's end waits for the replies its dead process wrote to be read
# calls sent ahead to an actor that runs them one at a time (runtime/worker.py): 5,000 calls on 2 cores went
# 4,300/s sent one by one (a round trip between each), about 9,000/s four ahead, 15,000/s sixteen ahead
IN_TURN_AHEAD = 16
# a call sent straight to an in-turn actor whose process is idle is written to it by the thread that takes
# it in, if it is this small: the process waits on its empty pipe, so the write cannot block
AT_ONCE_BYTES = 32 << 10
Reply = Callable[[pb.CallReply], None]
ACTORS_ENDED_KEPT = 10_000  # the latest instances that ended here, by actor (to tell a refusal which it is)
# answers of calls sent straight, kept for a caller whose stream broke before it had them (the latest, at most)
DIRECT_DONE_KEPT, DIRECT_DONE_BYTES = 10_000, 64 << 20


class ActorRunning:
    """The executor's actors: a worker process of its own for an actor's life, its calls run there one at a time
    in the order the head gave them (several sent ahead), or several at once (max_concurrency, async). Its
    state is the Executor's (set in Executor.__init__): a part of Executor, not used alone."""

    def _run_actor(self, a: pb.Assignment) -> None:
        """Start the actor's process and construct it, then run its calls one at a time until it is
        killed or its process dies (then the head restarts it, or not, and puts its calls back)."""
        inst = self.actors.get(a.item_id)
        if inst is None or inst.assignment is not a:
            self._done(a, pb.ItemResult(id=a.item_id, state="lost", message="replaced by a newer instance"))
            return
        try:
            payload, deps = self._inputs(a)
        except Exception as e:  # noqa: BLE001 - the head away or the data gone
            self._end_actor(a, self._inputs_failed(a, e))
            return
        try:
            env = self._runtime_env(a)
        except RuntimeEnvSetupFailed as e:  # its error: the actor is dead, its calls fail with it
            self._end_actor(a, pb.ItemResult(id=a.item_id, state="failed", message=str(e)))
            return
        worker = Worker(self._env(list(a.gpu_ids), {"LAUNCH_ACTOR_ID": a.item_id, "LAUNCH_ATTEMPT": str(a.attempt),
                                                       **(env.env if env else {})}),
                        cwd=env.cwd if env else None, actor=True)
        with inst.cond:
            inst.worker = worker
            stopped = inst.stopped
        if stopped or not self._started(a, inst):
            worker.kill()
            self._end_actor(a, pb.ItemResult(id=a.item_id, state="cancelled", message="cancelled"))
            return
        try:
            status, data = worker.call(payload, deps, a.item_id, op="actor", context=task_context(a))
        except WorkerDied as e:
            self._end_actor(a, pb.ItemResult(id=a.item_id, state="lost", exit_code=worker.exit_code(),
                                             message=f"its process died ({e})"))
            return
        if status != "ok":  # the constructor raised: the actor is dead, its calls fail with this
            worker.kill()
            self._end_actor(a, self._result(a, status, data))
            return
        mode = cloudpickle.loads(data)  # how many calls it takes at once
        if mode["concurrency"] > 1 or mode["async"]:
            self._serve(a, inst, worker, mode["concurrency"])
        else:  # one at a time, in order, several sent ahead (the next is there as one ends)
            inst.in_turn = True
            self._serve(a, inst, worker, IN_TURN_AHEAD)

    def _next_call(self, inst: ActorInstance, worker: Worker, room: Callable[[], bool]) -> pb.Assignment | None:
        """The next call to give the actor's process, once there is one and room for it; None when the actor
        is over (killed, or its process died)."""
        with inst.cond:
            while (not inst.calls or not room()) and not inst.stopped and worker.alive():
                inst.cond.wait(ACTOR_CHECK_S)
            if not inst.stopped and inst.calls and worker.alive():
                call = inst.calls.popleft()
                inst.running[call.item_id] = call
                return call
        return None

    def _send_call(self, a: pb.Assignment, inst: ActorInstance, worker: Worker, call: pb.Assignment) -> bool:
        """The call's inputs fetched and sent to the actor's process; False if its process died."""
        try:
            payload, deps = self._inputs(call)
        except Exception as e:  # noqa: BLE001
            self._call_done(inst, call, self._inputs_failed(call, e))
            return True
        try:
            worker.send(payload, deps, a.item_id, op="call", context={"task_id": call.item_id})
        except WorkerDied:
            return False
        return True

    def _calls_over(self, inst: ActorInstance, why: str) -> None:
        """(under self.lock and inst.cond; the instance is over) The calls it had: those that may have started
        died with it (all of a concurrent actor's in its process; the first of an in-turn actor's, which runs
        them in order); the others, sent ahead or still in line, never ran (refused: their callers send them
        on; the head's calls are not reported, and the head puts them back in line or fails them)."""
        calls = [c for c in inst.running.values() if c.item_id not in inst.answered]
        started, waiting = (calls[:1], calls[1:]) if inst.in_turn else (calls, [])
        waiting += inst.calls
        inst.calls.clear()
        self._direct_over(started, "died", why)
        for c in waiting:
            self.given.discard((c.item_id, c.attempt))
        self._direct_over(waiting, "refused", OVER)

    def cancel_sent(self, item_id: str) -> bool:
        """(under self.lock) A call sent ahead to an in-turn actor's process: told not to run it if it has not
        started (its reply says which). False if no actor here has it."""
        for inst in self.actors.values():
            with inst.cond:
                if inst.in_turn and item_id in inst.running and inst.worker is not None:
                    inst.worker.cancel(item_id)
                    return True
        return False

    def _serve(self, a: pb.Assignment, inst: ActorInstance, worker: Worker, concurrency: int) -> None:
        """Up to `concurrency` calls in its process at once (threads, or coroutines on its loop; or, for an
        in-turn actor, in its line: runtime/worker.py); each reply names its call, and is read by a thread of
        its own. This thread alone ends the actor."""
        def read() -> None:
            while True:
                try:
                    call_id, status, data = worker.receive()
                except WorkerDied:  # (its end: the sender sees the process gone, and ends the actor once this ends)
                    with inst.cond:
                        inst.cond.notify_all()
                    return
                with inst.cond:
                    call = inst.running.get(call_id)
                    inst.answered.add(call_id)  # (no longer among those that may be running)
                    inst.cond.notify_all()  # room for another
                if call is not None:
                    self._call_done(inst, call, self._result(call, status, data))

        reader = threading.Thread(target=read, name=f"actor-replies-{a.item_id}", daemon=True)
        reader.start()
        while True:
            call = self._next_call(inst, worker, room=lambda: len(inst.running) < concurrency)
            if call is None or not self._send_call(a, inst, worker, call):
                break
        with inst.cond:
            killed = inst.stopped
        code = 0 if killed else worker.exit_code()
        worker.kill()  # killed, or its process died (OOM, killed): restarted now, not at its next call
        # every reply it wrote is read before the actor ends: a call answered is not one that died with it (nor,
        # in turn, is the call after it taken for one that never started)
        reader.join(timeout=READER_END_S)
        self._end_actor(a, pb.ItemResult(id=a.item_id, state="cancelled", message="killed") if killed else
                        pb.ItemResult(id=a.item_id, state="lost", exit_code=code,
                                      message=f"its process died (exit code {code})"))

    def _call_done(self, inst: ActorInstance, call: pb.Assignment, result: pb.ItemResult) -> None:
        with self.lock:
            with inst.cond:
                inst.running.pop(call.item_id, None)
                inst.answered.discard(call.item_id)
            if not self._retire((call.item_id, call.attempt)):
                return
        self._hand_over(result, call.attempt)

    def _end_actor(self, a: pb.Assignment, result: pb.ItemResult) -> None:
        """The instance is over: its calls not run are not reported (the head puts them back in line with
        the actor, or fails them), and it gives back what it held."""
        with self.lock:
            inst = self.actors.get(a.item_id)
            if inst is not None and inst.assignment is a:
                del self.actors[a.item_id]
                killed = inst.stopped  # (before this marks it stopped: killed, not dead by itself)
                with inst.cond:
                    inst.stopped = True
                    self._calls_over(inst, "was killed" if killed else "died")
                self.actors_ended[a.item_id] = a.attempt
                if len(self.actors_ended) > ACTORS_ENDED_KEPT:
                    self.actors_ended.popitem(last=False)
        self._done(a, result)

    # --- calls straight from their callers (runtime/direct.py) --------------------------------------

    def take_direct(self, req: pb.CallRequest, reply: Reply) -> None:
        """A call sent straight here: into its actor's line if the instance it names runs here, else refused
        (never run: its caller sends it the head's way). A cancel takes a call out of the line; one that
        started runs to its end, as a call given by the head does."""
        if req.cancel:
            with self.lock:
                queued = req.id in self.direct and (req.id, DIRECT_ATTEMPT) in self.given
            if queued:
                self.cancel(req.id)
            return
        if req.resume:  # its caller's stream broke: the outcome goes to the new one
            with self.lock:
                if req.id in self.direct:
                    self.direct[req.id] = (reply, self.direct[req.id][1])
                    return
                done = self.direct_done.get(req.id)
            reply(pb.CallReply(id=req.id, outcome="done", result=done) if done is not None else
                  pb.CallReply(id=req.id, outcome="refused"))
            return
        call = pb.Assignment(item_id=req.id, spec=req.spec, attempt=DIRECT_ATTEMPT)
        actor_id, attempt = req.spec.actor_id, req.actor_attempt
        now = None  # the actor's process, idle: the call is written to it here and now
        with self.lock:
            inst = self.actors.get(actor_id)
            taken = (inst is not None and inst.assignment.attempt == attempt and req.id not in self.direct
                     and not self.preempting)
            if taken:
                with inst.cond:
                    taken = not inst.stopped
                    if taken:
                        self.given.add((req.id, DIRECT_ATTEMPT))
                        self.direct[req.id] = (reply, req.spec)
                        if (inst.in_turn and inst.worker is not None and not inst.calls and not inst.running
                                and not req.spec.depends_on and 0 < len(req.spec.payload) <= AT_ONCE_BYTES):
                            inst.running[req.id] = call
                            now = inst.worker
                        else:
                            inst.cond.notify_all()
                            inst.calls.append(call)
            # (refused) whether that instance is over here, or has not arrived yet (the head placed it a moment
            # ago): its caller sends the call on to the next instance, or to that one, by the head
            over = not taken and ((inst is not None and (inst.assignment.attempt > attempt or inst.stopped))
                                  or self.actors_ended.get(actor_id, -1) >= attempt)
        if not taken:
            reply(pb.CallReply(id=req.id, outcome="refused", result=pb.ItemResult(message=OVER if over else "")))
        elif now is not None:  # (its line's thread is not woken for it: one thread hop less on a call's way)
            try:
                now.send(req.spec.payload, {}, actor_id, op="call", context={"task_id": req.id})
            except WorkerDied:  # never sent: back in line, where the actor's end finds it not run
                with inst.cond:
                    if inst.running.pop(req.id, None) is not None:
                        inst.calls.appendleft(call)
                    inst.cond.notify_all()

    def _direct_over(self, calls, outcome: str, why: str = "") -> None:
        """(under self.lock) These calls' callers, for those sent straight, hear that they were not run
        (refused) or died with the actor's process (`why`: 'was killed', 'died'): they decide what comes next."""
        for c in list(calls):
            if c.attempt == DIRECT_ATTEMPT and c.item_id in self.direct:
                reply, _ = self.direct.pop(c.item_id)
                self.given.discard((c.item_id, DIRECT_ATTEMPT))
                reply(pb.CallReply(id=c.item_id, outcome=outcome, result=pb.ItemResult(id=c.item_id, message=why)))

    def _direct_done(self, result: pb.ItemResult) -> pb.ItemResult | None:
        """(a call sent straight, done) Its caller gets the outcome now; the head gets it with the call's spec
        (without its payload), which it may not know. None: nobody waits for it (it was over already)."""
        if result.state not in ("finished", "failed", "cancelled"):  # (lost: it ran; its result was not kept)
            result = pb.ItemResult(id=result.id, state="failed", message=result.message, exit_code=result.exit_code)
        result.node_id = self.node_id
        with self.lock:
            found = self.direct.pop(result.id, None)
            if found is not None:  # kept a while: an answer lost with its stream is asked for again (resume)
                self.direct_done[result.id] = result
                self.direct_done_bytes += result.ByteSize()
                while self.direct_done and (len(self.direct_done) > DIRECT_DONE_KEPT
                                            or self.direct_done_bytes > DIRECT_DONE_BYTES):
                    self.direct_done_bytes -= self.direct_done.popitem(last=False)[1].ByteSize()
        if found is None:
            return None
        reply, spec = found
        reply(pb.CallReply(id=result.id, outcome="done", result=result))
        report = pb.ItemResult()
        report.CopyFrom(result)
        report.direct.CopyFrom(spec)
        report.direct.ClearField("payload")
        return report
