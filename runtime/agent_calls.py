"""The node agent's own service: actor calls straight from their callers (runtime/direct.py).

A caller on the cluster's network sends its calls of an actor to the agent of the actor's node on one stream
and gets each outcome back on it: two hops instead of four through the head. The service listens where the
head's does (loopback and the node's private address), behind the same token check: the cluster token, or
the work credential that tasks and actors have.
"""

from __future__ import annotations

import asyncio
import threading

from runtime.auth import TokenInterceptor
from runtime.limits import GRPC_OPTIONS
from runtime.loop_server import LoopServer, loopback_and
from runtime.proto import head_pb2 as pb
from runtime.proto import head_pb2_grpc as pb_grpc

CALL_THREADS = 4  # the service's handlers run on its loop; these are for gRPC's own needs
# Callers ping their stream to find a node gone silent, also while a long call runs and nothing else moves:
# gRPC's default would answer such pings with GOAWAY after two, breaking the stream (and the calls on it).
PINGS_ALLOWED = [("grpc.http2.max_ping_strikes", 0), ("grpc.keepalive_permit_without_calls", 1)]
REPLY_BATCH = 1000  # answers in one message at most (each is small: a large value is on the head's disk)


class CallService(pb_grpc.AgentServicer):
    def __init__(self, executor):
        self.executor = executor

    async def Calls(self, request_iterator, context):
        """Each call goes into its actor's line as it comes; outcomes go back as they come, in any order."""
        loop = asyncio.get_running_loop()
        ready: list[pb.CallReply] = []  # answers not yet taken by this stream's writer
        lock = threading.Lock()
        woken = asyncio.Event()
        wake_due = False  # a wake-up of the writer is on its way (answers coming fast share one)
        ended = False

        def reply(message: pb.CallReply) -> None:  # (from the thread that ran the call)
            nonlocal wake_due
            with lock:
                ready.append(message)
                if wake_due:
                    return
                wake_due = True
            loop.call_soon_threadsafe(woken.set)

        async def take() -> None:
            nonlocal ended
            try:
                async for requests in request_iterator:
                    for request in requests.calls:
                        self.executor.take_direct(request, reply)
            finally:
                ended = True
                woken.set()

        taker = asyncio.ensure_future(take())
        try:
            while True:
                await woken.wait()
                woken.clear()
                with lock:
                    batch, ready[:] = ready[:REPLY_BATCH], ready[REPLY_BATCH:]
                    wake_due = bool(ready)
                    more = wake_due
                if more:
                    woken.set()
                if batch:
                    yield pb.CallReplies(replies=batch)
                elif ended:
                    return
        finally:
            taker.cancel()


def serve_calls(executor, token: str, address: str) -> tuple[LoopServer | None, int]:
    """The service on loopback and `address`, on one free port; (None, 0) where it cannot listen (the
    callers then go by the head)."""
    server = LoopServer(CALL_THREADS, [TokenInterceptor(token)], GRPC_OPTIONS + PINGS_ALLOWED)
    server.add_servicer(pb_grpc.add_AgentServicer_to_server, CallService(executor))
    port = server.listen(loopback_and(address), 0)
    if port == 0:
        server.stop(grace=0)
        return None, 0
    server.start()
    return server, port
