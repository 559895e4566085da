"""The head's part in actor calls that go straight from their caller to the actor's node (runtime/direct.py).

The head does not run those calls, so it learns of each only once it is done: from the node's report (each
carries what the call was), or from its caller, which hands the outcome it got over before it lets the call's
ref reach anyone else (`WorkSpec.outcome`). Whichever comes first is recorded; the other finds the id known
and changes nothing. It also says where an actor runs (GetActor by id) to a caller about to call it straight.
"""

from __future__ import annotations

import grpc

from runtime.head_state import item_of
from runtime.proto import head_pb2 as pb
from runtime.work import CALL, DONE_STATES, FAILED, FINISHED, Item, RUNNING


class DirectCalls:
    """Its state is the HeadServicer's (set in HeadServicer.__init__): a part of it, not used alone."""

    def GetActor(self, request, context):
        with self.lock:
            item = (self.sched.items.get(request.id) if request.id else self.sched.actor_by_name(request.name))
            if item is None or item.kind != "actor":
                if request.id:
                    state = self.sched.state_of(request.id)
                    if state is not None:  # (done: it is dead) calls go by the head, which fails them
                        return pb.GetActorReply(id=request.id, state=state)
                    context.abort(grpc.StatusCode.NOT_FOUND, f"no actor {request.id[:100]!r}")
                context.abort(grpc.StatusCode.NOT_FOUND, f"no live actor is named {request.name[:100]!r}")
            reply = pb.GetActorReply(id=item.id, state=item.state, class_name=item.name)
            node = self.nodes.get(item.node_id)
            # only an instance that is placed, not being restarted and not waiting for its node to come back
            if (item.state == RUNNING and node is not None and node.call_port and node.state == "alive"
                    and not item.restart_requested and item.id not in self.sched.recovering):
                reply.call_address, reply.attempt = f"{node.address}:{node.call_port}", item.attempt
            return reply

    def _split_direct(self, results) -> tuple[list, list[pb.ItemResult]]:
        """A report's results: those of items the head gave out, and those of calls that ran straight."""
        given, direct = [], []
        for r in results:
            (direct if r.HasField("direct") else given).append(r)
        return given, direct

    def _record_direct(self, node_id: str, outcomes: list[tuple[pb.ItemResult, pb.WorkSpec]],
                       now: float) -> list[tuple[Item, bytes]]:
        """(under self.lock) Calls that ran straight, with their outcomes, recorded done unless known; returns
        the new items, for the commit that writes them (_settle)."""
        ids = [r.id for r, _ in outcomes]
        known = {i for i in ids if i in self.sched.items} | self.store.known(
            [i for i in ids if i not in self.sched.items])
        new = []
        for r, spec in outcomes:
            if r.id in known or spec.kind != CALL or not spec.actor_id:
                continue
            known.add(r.id)
            spec = pb.WorkSpec(kind=CALL, name=spec.name, actor_id=spec.actor_id, max_retries=spec.max_retries,
                               parent_id=spec.parent_id)
            if r.stored and r.state == FINISHED:  # the node uploaded it: it is the item's result from now on
                try:
                    self.store.claim_upload(r.id, r.node_id or node_id)
                except FileNotFoundError:  # (moved already, or never uploaded: a get then says it is lost)
                    pass
            state = r.state if r.state in DONE_STATES else FAILED
            item = item_of(r.id, spec, now)
            result = pb.ItemResult()
            result.CopyFrom(r)
            result.ClearField("direct")
            result.node_id = r.node_id or node_id
            self.sched.record_done(item, state, now, result.node_id, result, r.exit_code, r.message)
            new.append((item, spec.SerializeToString()))
        return new
