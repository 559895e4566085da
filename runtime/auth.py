"""The cluster token on every gRPC call: an interceptor on the server, metadata on the client.

An open job-submission port is remote code execution, so the head refuses any call whose
`authorization` metadata is not `Bearer <cluster token>`, or the work credential derived from it for
the calls work may make. Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

import grpc

METADATA_KEY = "authorization"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def call_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return ((METADATA_KEY, f"Bearer {token}"),)


# What work running on the cluster (tasks, jobs) may call with its credential: submit more work, fetch
# results and logs, cancel, read the cluster's state. Registering nodes, heartbeats, the agents' work
# streams and reports, drains and node removal need the cluster token itself.
WORK_METHODS = frozenset({"Submit", "GetResults", "Session", "Cancel", "GetActor", "KeepAlive", "ListItems",
                          "JobLogs", "GetClusterState", "UploadArgs", "FetchResult",
                          "Calls"})  # (the last: a node agent's, runtime/agent_calls.py)
# a refusal must have the shape of the call it refuses
RESPONSE_STREAMS = frozenset({"WorkStream", "FetchArgs", "FetchResult"})
REQUEST_STREAMS = frozenset({"UploadArgs", "UploadResult"})
BOTH_STREAMS = frozenset({"Session", "ReportStream", "Calls"})


def work_token(cluster_token: str) -> str:
    """The credential tasks and jobs get: derived from the cluster token (so the head and every agent
    know it without storing it), and good only for WORK_METHODS."""
    digest = hmac.new(cluster_token.encode(), b"launch work credential v1", hashlib.sha256).digest()
    return "w." + base64.urlsafe_b64encode(digest).decode().rstrip("=")


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """For the head's asyncio server (runtime/loop_server.py)."""

    def __init__(self, token: str):
        if not token:
            raise ValueError("the runtime refuses to start without a cluster token")
        self._expected = f"Bearer {token}".encode()
        self._work = f"Bearer {work_token(token)}".encode()

        # (coroutines: an asyncio server takes one for any shape of call, streams included)
        async def deny(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong cluster token")

        async def deny_work(request, context):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "work on the cluster may not make this call")

        def handlers(fn):
            return {"unary": grpc.unary_unary_rpc_method_handler(fn),
                    "response": grpc.unary_stream_rpc_method_handler(fn),
                    "request": grpc.stream_unary_rpc_method_handler(fn),
                    "both": grpc.stream_stream_rpc_method_handler(fn)}

        self._deny, self._deny_work = handlers(deny), handlers(deny_work)

    async def intercept_service(self, continuation, handler_call_details):
        given = dict(handler_call_details.invocation_metadata or ()).get(METADATA_KEY, "").encode()
        if hmac.compare_digest(given, self._expected):
            return await continuation(handler_call_details)
        method = handler_call_details.method.rsplit("/", 1)[-1]
        shape = ("response" if method in RESPONSE_STREAMS else "request" if method in REQUEST_STREAMS
                 else "both" if method in BOTH_STREAMS else "unary")
        if hmac.compare_digest(given, self._work):
            if method in WORK_METHODS:
                return await continuation(handler_call_details)
            return self._deny_work[shape]
        return self._deny[shape]
