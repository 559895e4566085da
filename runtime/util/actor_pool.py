"""ActorPool (Ray's `ray.util.ActorPool`): work spread over a fixed set of actors, each given one value
at a time; results in submission order (map, get_next) or as they finish (map_unordered,
get_next_unordered)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any


class ActorPool:
    def __init__(self, actors: list):
        self._idle = list(actors)
        self._running: dict[Any, tuple[int, Any]] = {}  # ref -> (its index, the actor computing it)
        self._by_index: dict[int, Any] = {}  # index -> ref, for results not yet taken
        self._queued: list[tuple[Callable, Any]] = []  # submitted while no actor was idle
        self._next_index = 0  # of the next submission
        self._next_return = 0  # of the next result in order

    # --- submitting ---------------------------------------------------------------------------------

    def submit(self, fn: Callable, value) -> None:
        """fn(actor, value) -> a ref (e.g. `lambda a, v: a.double.remote(v)`), run by an idle actor now or
        by the first that comes free."""
        if not self._idle:
            self._queued.append((fn, value))
            return
        actor = self._idle.pop()
        ref = fn(actor, value)
        self._running[ref] = (self._next_index, actor)
        self._by_index[self._next_index] = ref
        self._next_index += 1

    def has_next(self) -> bool:
        return bool(self._running) or bool(self._queued)

    def has_free(self) -> bool:
        return bool(self._idle) and not self._queued

    def pop_idle(self):
        """An idle actor, taken out of the pool (None if none is)."""
        return self._idle.pop() if self.has_free() else None

    def push(self, actor) -> None:
        """An actor added to the pool (it takes queued work at once)."""
        if actor in self._idle or any(a == actor for _, a in self._running.values()):
            raise ValueError("the actor is already in the pool")
        self._free(actor)

    def _free(self, actor) -> None:
        self._idle.append(actor)
        if self._queued:
            self.submit(*self._queued.pop(0))

    # --- results ------------------------------------------------------------------------------------

    def _take(self, ref, timeout, ignore_if_timedout: bool):
        import runtime

        if timeout is not None:
            ready, _ = runtime.wait([ref], timeout=timeout)
            if not ready:
                if ignore_if_timedout:  # given up on: it no longer counts as next
                    self._forget(ref)
                raise TimeoutError("timed out waiting for a result")
        self._forget(ref)
        return runtime.get(ref)

    def _forget(self, ref) -> None:
        index, actor = self._running.pop(ref)
        del self._by_index[index]
        self._free(actor)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False):
        """The next result in submission order."""
        if not self.has_next():
            raise StopIteration("no more results to get")
        while self._next_return not in self._by_index:  # taken out of order already, or not started
            if self._next_return >= self._next_index:
                raise RuntimeError("the next result is of work still queued: get_next_unordered() takes it")
            self._next_return += 1
        ref = self._by_index[self._next_return]
        value = self._take(ref, timeout, ignore_if_timedout)
        self._next_return += 1
        return value

    def get_next_unordered(self, timeout: float | None = None, ignore_if_timedout: bool = False):
        """The next result to finish, whichever it is."""
        import runtime

        if not self.has_next():
            raise StopIteration("no more results to get")
        ready, _ = runtime.wait(list(self._running), num_returns=1, timeout=timeout)
        if not ready:
            raise TimeoutError("timed out waiting for a result")
        return self._take(ready[0], None, ignore_if_timedout)

    def map(self, fn: Callable, values: Iterable) -> Iterator:
        """fn over values, the results in the order of the values."""
        while self.has_next():  # what an earlier map left is not this one's
            self.get_next_unordered()
        for v in values:
            self.submit(fn, v)
        while self.has_next():
            yield self.get_next()

    def map_unordered(self, fn: Callable, values: Iterable) -> Iterator:
        """fn over values, each result as soon as it is done."""
        while self.has_next():
            self.get_next_unordered()
        for v in values:
            self.submit(fn, v)
        while self.has_next():
            yield self.get_next_unordered()
