"""Cancelling, as the head's scheduler (runtime/scheduler.py) does it: one item, or an item and what it
submitted; an actor killed to restart."""

from __future__ import annotations

from runtime.work import ACTOR, BLOCKED, CALL, CANCELLED, DONE_STATES, INFEASIBLE, PG, QUEUED, RUNNING


class Cancelling:
    """The scheduler's cancels. Its state is the Scheduler's (set in Scheduler.__init__); it is a part of
    Scheduler, not used alone."""

    def cancel_tree(self, item_id: str, now: float) -> tuple[str, list[tuple[str, str]]]:
        """Cancel the item and, recursively, what it submitted that is not done. Returns (the item's state,
        (item, node) pairs whose node is to be told to stop it)."""
        state, node_id = self.cancel(item_id, now)
        stop = [(item_id, node_id)] if node_id else []
        todo = sorted(self.children.get(item_id, ()))
        while todo:
            child = todo.pop()
            if child in self.items and self.items[child].state not in DONE_STATES:
                _, node = self.cancel(child, now)
                if node:
                    stop.append((child, node))
            todo += sorted(self.children.get(child, ()))
        return state, stop

    def cancel(self, item_id: str, now: float, restart: bool = False) -> tuple[str, str | None]:
        """Returns (state, node to tell to stop the item or None). Cancelling an actor kills it (`restart`:
        as if it had crashed, so it restarts while max_restarts allows); a placement group, removes it (the
        nodes to tell are in to_stop)."""
        item = self.items.get(item_id)
        if item is None:
            raise KeyError(item_id)
        if restart and item.kind == ACTOR and item.state == RUNNING:
            item.restart_requested = True
            return RUNNING, item.node_id
        if item.kind == PG and item.id in self.groups:
            self._remove_group(self.groups[item.id], now)
            return CANCELLED, None
        if item.state in (QUEUED, BLOCKED, INFEASIBLE):
            if item.state == QUEUED and item.kind != CALL and not item.pg_id:
                self.queued_count[item.shape] -= 1
            self.infeasible.pop(item_id, None)
            self._finish(item, CANCELLED, now, message="cancelled")
            return CANCELLED, None
        if item.state == RUNNING:
            item.cancel_requested = True
            return RUNNING, item.node_id
        return item.state, None
