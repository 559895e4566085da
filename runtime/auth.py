"""The cluster token on every gRPC call: an interceptor on the server, metadata on the client.

An open job-submission port is remote code execution, so the head refuses any call whose
`authorization` metadata is not `Bearer <cluster token>`. The token is compared in constant time and
never logged.
"""

from __future__ import annotations

import hmac
import secrets

import grpc

METADATA_KEY = "authorization"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def call_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return ((METADATA_KEY, f"Bearer {token}"),)


class TokenInterceptor(grpc.ServerInterceptor):
    def __init__(self, token: str):
        if not token:
            raise ValueError("the runtime refuses to start without a cluster token")
        self._expected = f"Bearer {token}".encode()

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong cluster token")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation, handler_call_details):
        given = dict(handler_call_details.invocation_metadata or ()).get(METADATA_KEY, "")
        if hmac.compare_digest(given.encode(), self._expected):
            return continuation(handler_call_details)
        return self._deny
