"""The actor part of the head's scheduler (runtime/scheduler.py)."""

from __future__ import annotations

from runtime.work import CANCELLED, DONE_STATES, FAILED, QUEUED, RUNNING, Actor, Item, Node


class ActorLines:
    """The scheduler's actors: each actor's line of calls, handed to its instance in submission order. Its state
    is the Scheduler's (set in Scheduler.__init__); it is a part of Scheduler, not used alone."""

    def _register_actor(self, item: Item) -> None:
        self.actors[item.id] = Actor(item.id)
        if item.actor_name:
            self.actor_names[item.actor_name] = item.id

    def _hand_out_calls(self, now: float) -> list[Item]:
        """Each placed actor's calls, in submission order, up to the first that waits on a dependency."""
        out = []
        ready, self.calls_ready = self.calls_ready, set()
        for actor_id in sorted(ready):
            actor, a = self.actors.get(actor_id), self.items.get(actor_id)
            if actor is None or a is None or a.state != RUNNING or actor_id in self.recovering or a.restart_requested:
                continue  # not placed (again) yet, or being killed to restart: its calls wait; placing it marks it ready
            while actor.waiting:
                seq, call_id = actor.waiting[0]
                call = self.items[call_id]
                if call.state != QUEUED or call.min_actor_attempt > a.attempt:  # (the latter: the next instance's)
                    break
                actor.waiting.pop(0)
                actor.given[call_id] = seq
                call.state, call.node_id, call.started_at = RUNNING, a.node_id, now
                self.dirty.add(call_id)
                out.append(call)
        return out

    def record_done(self, item: Item, state: str, now: float, node_id: str, result: object, exit_code: int,
                    message: str) -> None:
        """A call that ran straight on its actor's node (runtime/direct.py), known here only once done."""
        self._order += 1
        item.seq, item.node_id, item.started_at = self._order, node_id, now
        item.result, item.exit_code = result, exit_code
        self.items[item.id] = item
        self._finish(item, state, now, message=message)

    def _dead_actor(self, actor_id: str) -> str:
        """Why a call of an actor that is not live fails: unknown, killed, or dead with its own reason (a
        constructor's error), as a call in its line when it died is told."""
        actor = self.items.get(actor_id)
        state, message = (actor.state, actor.message) if actor is not None else (self.done_item(actor_id) or (None, ""))
        if state is None:
            return "unknown"
        if state == CANCELLED:
            return "dead (it was killed)"
        return f"dead ({state})" + (f": {message}" if message else "")

    def calls_given_on(self, node: Node) -> list[str]:
        """The calls handed to the actors running on the node, in the order they were submitted."""
        given = [(seq, c) for a in node.running if a in self.actors for c, seq in self.actors[a].given.items()]
        return [c for _, c in sorted(given)]

    def actor_by_name(self, name: str) -> Item | None:
        actor_id = self.actor_names.get(name)
        return self.items.get(actor_id) if actor_id else None

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
