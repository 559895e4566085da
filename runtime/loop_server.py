"""A gRPC server whose calls are served from an asyncio event loop on a thread of its own.

Why not `grpc.server`: there each call holds a thread until it is answered, so a `get` that waits for its
result holds one for the whole wait, and a few thousand waiting clients take every thread (heartbeats
then queue behind them, nodes are declared dead: issue 28.6). Here an `async def` handler waits on the
loop for nothing but memory, and a plain (sync) handler runs on the thread pool, as it would on
`grpc.server`. Made, bound, started and stopped from any thread.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc


# Threads for the short blocking steps of async handlers (`loop.run_in_executor(None, ...)`: taking the
# head's lock, reading the store): a few are enough (the steps hold the GIL), and a burst of ten thousand
# gets waking at once queues here, not on the threads of the plain handlers (heartbeats)
STEP_THREADS = 8
# Calls that arrive faster than the loop takes them wait in gRPC's queue, which by default keeps 1,000
# (3,000 at most): ten thousand clients asking at once would find it full and part of them would hang
PENDING_CALLS = 100_000


def loopback_and(address: str) -> list[str]:
    """Where a runtime service listens: loopback (this machine's processes, an SSH port forward) and the
    address the cluster's nodes reach it on; never every interface."""
    return ["127.0.0.1"] + ([address] if address not in ("127.0.0.1", "localhost", "") else [])


class LoopServer:
    def __init__(self, threads: int, interceptors: list, options: list):
        self.loop = asyncio.new_event_loop()
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rpc")
        self.steps = ThreadPoolExecutor(max_workers=STEP_THREADS, thread_name_prefix="rpc-step")
        self.loop.set_default_executor(self.steps)
        self._thread = threading.Thread(target=self.loop.run_forever, name="rpc-loop", daemon=True)
        self._thread.start()

        # an aio server belongs to the loop it is made on
        self.server = self._on_loop(lambda: grpc.aio.server(
            migration_thread_pool=self.pool, interceptors=interceptors,
            options=[*options, ("grpc.server.max_pending_requests", PENDING_CALLS),
                     ("grpc.server.max_pending_requests_hard_limit", PENDING_CALLS)]))

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def _on_loop(self, fn):
        """fn() called on the loop's thread (the aio server's own methods must be), its result returned."""
        async def call():
            return fn()

        return self._run(call())

    def add_servicer(self, add_to_server, servicer) -> None:
        self._on_loop(lambda: add_to_server(servicer, self.server))

    def add_insecure_port(self, address: str) -> int:
        return self._on_loop(lambda: self.server.add_insecure_port(address))

    def listen(self, hosts: list[str], port: int) -> int:
        """Bind every host to one port (0: the first bind picks it); 0 if any bind fails."""
        for host in hosts:
            try:
                port = self.add_insecure_port(f"{host}:{port}")
            except RuntimeError:
                return 0
            if port == 0:
                return 0
        return port

    def start(self) -> None:
        self._run(self.server.start())

    def stop(self, grace: float | None) -> threading.Event:
        """Ends every call after `grace` seconds (in-flight ones may finish meanwhile); the returned event
        is set once the server and its loop are gone."""
        stopped = threading.Event()

        async def stop():
            try:
                await self.server.stop(grace)
            finally:
                self.loop.call_soon(self.loop.stop)
                self.pool.shutdown(wait=False)
                self.steps.shutdown(wait=False)
                stopped.set()

        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(stop(), self.loop)
        else:
            stopped.set()
        return stopped
