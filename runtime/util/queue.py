"""Queue (Ray's `ray.util.queue.Queue`): a first-in first-out queue in an async actor, shared by the
driver, tasks and actors it is passed to.

    from runtime.util.queue import Queue, Empty
    q = Queue(maxsize=100)
    q.put(1); q.put_nowait_batch([2, 3])
    q.get(timeout=5)                      # Empty if nothing came in time
"""

from __future__ import annotations

import asyncio
import queue as _queue
from collections.abc import Iterable

import runtime


class Empty(_queue.Empty):
    pass


class Full(_queue.Full):
    pass


class _QueueActor:
    """The queue's state: calls interleave on the actor's loop, so a get waiting for an item does not
    hold up the put that brings it."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self.queue: asyncio.Queue = asyncio.Queue(maxsize)

    def qsize(self) -> int:
        return self.queue.qsize()

    async def put(self, item, timeout: float | None = None) -> None:
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except asyncio.TimeoutError:
            raise Full(f"the queue stayed full for {timeout}s") from None

    async def get(self, timeout: float | None = None):
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            raise Empty(f"nothing came within {timeout}s") from None

    def put_nowait(self, item) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            raise Full(f"the queue is full ({self.maxsize} items)") from None

    def put_nowait_batch(self, items: list) -> None:
        if self.maxsize > 0 and len(items) + self.queue.qsize() > self.maxsize:
            raise Full(f"{len(items)} item(s) do not fit: the queue holds {self.queue.qsize()} of {self.maxsize}")
        for item in items:
            self.queue.put_nowait(item)

    def get_nowait(self):
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
            raise Empty("the queue is empty") from None

    def get_nowait_batch(self, num_items: int) -> list:
        if num_items > self.queue.qsize():
            raise Empty(f"{num_items} item(s) asked for, {self.queue.qsize()} in the queue")
        return [self.queue.get_nowait() for _ in range(num_items)]


class Queue:
    """A queue in the cluster (an actor that holds no resources unless `actor_options` say so);
    picklable: pass it to tasks and actors."""

    def __init__(self, maxsize: int = 0, actor_options: dict | None = None):
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 0:
            raise ValueError(f"maxsize must be an int >= 0 (got {maxsize!r:.40})")
        self.maxsize = maxsize
        self.actor = runtime.remote(_QueueActor).options(**(actor_options or {})).remote(maxsize)

    def __reduce__(self):
        return _attached, (self.maxsize, self.actor)

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        return runtime.get(self.actor.qsize.remote())

    def qsize(self) -> int:
        return self.size()

    def empty(self) -> bool:
        return self.size() == 0

    def full(self) -> bool:
        return self.maxsize > 0 and self.size() >= self.maxsize

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        """Add an item; waits for room (up to `timeout`) unless `block` is False; Full if none came."""
        if not block:
            return self.put_nowait(item)
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be >= 0")
        runtime.get(self.actor.put.remote(item, timeout))

    async def put_async(self, item, block: bool = True, timeout: float | None = None) -> None:
        if not block:
            return await self.actor.put_nowait.remote(item)
        await self.actor.put.remote(item, timeout)

    def get(self, block: bool = True, timeout: float | None = None):
        """The oldest item; waits for one (up to `timeout`) unless `block` is False; Empty if none came."""
        if not block:
            return self.get_nowait()
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be >= 0")
        return runtime.get(self.actor.get.remote(timeout))

    async def get_async(self, block: bool = True, timeout: float | None = None):
        if not block:
            return await self.actor.get_nowait.remote()
        return await self.actor.get.remote(timeout)

    def put_nowait(self, item) -> None:
        runtime.get(self.actor.put_nowait.remote(item))

    def put_nowait_batch(self, items: Iterable) -> None:
        runtime.get(self.actor.put_nowait_batch.remote(list(items)))

    def get_nowait(self):
        return runtime.get(self.actor.get_nowait.remote())

    def get_nowait_batch(self, num_items: int) -> list:
        if isinstance(num_items, bool) or not isinstance(num_items, int) or num_items < 0:
            raise ValueError(f"num_items must be an int >= 0 (got {num_items!r:.40})")
        return runtime.get(self.actor.get_nowait_batch.remote(num_items))

    def shutdown(self, force: bool = False, grace_period_s: int = 5) -> None:
        """The queue's actor ends (what it held is gone)."""
        if self.actor is not None:
            runtime.kill(self.actor)
            self.actor = None


def _attached(maxsize: int, actor) -> Queue:
    q = Queue.__new__(Queue)
    q.maxsize, q.actor = maxsize, actor
    return q
