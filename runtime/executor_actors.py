"""Actors, as a node's executor (runtime/executor.py) runs them."""

from __future__ import annotations


from runtime.executor_tasks import task_context
from runtime.processes import ActorInstance, Worker, WorkerDied
from runtime.proto import head_pb2 as pb

ACTOR_CHECK_S = 1.0  # how often an idle actor's process is looked at


class ActorRunning:
    """The executor's actors: a worker process of its own for an actor's life, its calls run there one at a time
    in the order the head gave them. Its state is the Executor's (set in Executor.__init__): a part of Executor,
    not used alone."""

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
            self._end_actor(a, pb.ItemResult(id=a.item_id, state="lost", message=f"its inputs could not be fetched ({e})"))
            return
        worker = Worker(self._env(list(a.gpu_ids), {"LAUNCH_ACTOR_ID": a.item_id}))
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
            self._end_actor(a, pb.ItemResult(id=a.item_id, state="lost", message=f"its process died ({e})"))
            return
        if status != "ok":  # the constructor raised: the actor is dead, its calls fail with this
            worker.kill()
            self._end_actor(a, self._result(a, status, data))
            return
        while True:
            with inst.cond:
                while not inst.calls and not inst.stopped and worker.alive():
                    inst.cond.wait(ACTOR_CHECK_S)
                if inst.stopped:
                    break
                call = inst.current = inst.calls.popleft() if inst.calls else None
            if call is None:  # its process died while idle (OOM, killed): restarted now, not at its next call
                self._end_actor(a, pb.ItemResult(id=a.item_id, state="lost",
                                                 message=f"its process died (exit code {worker.proc.poll()})"))
                return
            try:
                payload, deps = self._inputs(call)
            except Exception as e:  # noqa: BLE001
                self._call_done(inst, call, pb.ItemResult(id=call.item_id, state="lost",
                                                          message=f"its inputs could not be fetched ({e})"))
                continue
            try:
                status, data = worker.call(payload, deps, a.item_id, op="call", context={"task_id": call.item_id})
            except WorkerDied as e:
                with inst.cond:
                    inst.current = None
                    stopped = inst.stopped
                self._end_actor(a, pb.ItemResult(id=a.item_id, state="cancelled" if stopped else "lost",
                                                 message=f"its process died ({e})"))
                return
            self._call_done(inst, call, self._result(call, status, data))
        worker.kill()
        self._end_actor(a, pb.ItemResult(id=a.item_id, state="cancelled", message="killed"))

    def _call_done(self, inst: ActorInstance, call: pb.Assignment, result: pb.ItemResult) -> None:
        with self.lock:
            with inst.cond:
                inst.current = None
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
                with inst.cond:
                    inst.stopped = True
                    for c in inst.calls:
                        self.given.discard((c.item_id, c.attempt))
                    inst.calls.clear()
        self._done(a, result)
