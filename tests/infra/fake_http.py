"""The HTTP side the cloud fakes share (fake_gce.py, fake_arm.py): a threaded JSON server over real sockets
that records each call, answers the next `throttle_next` calls with the cloud's 429, and hands every
other request to the fake's own `answer`. Each fake says only how its cloud authenticates, routes and
words its errors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import ParseResult, urlparse


@dataclass
class Reply:
    code: int
    body: dict | None  # JSON; None: an empty body (a 202 or 204 with nothing to say)
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json; charset=utf-8"


class JsonApi:
    """A fake cloud API's server side. Subclasses set `lock`, `calls` and `throttle_next` (their test
    controls) and give `answer` and `throttled`."""

    lock: object
    calls: list[tuple[str, str]]
    throttle_next: int

    def answer(self, method: str, url: ParseResult, headers, raw: bytes) -> Reply:
        raise NotImplementedError

    def throttled(self) -> Reply:
        raise NotImplementedError

    def reply_to(self, method: str, path: str, headers, raw: bytes) -> Reply:
        url = urlparse(path)
        with self.lock:
            self.calls.append((method, url.path))
            throttled = self.throttle_next > 0
            if throttled:
                self.throttle_next -= 1
        return self.throttled() if throttled else self.answer(method, url, headers, raw)

    def http_server(self, host: str) -> ThreadingHTTPServer:
        httpd = ThreadingHTTPServer((host, 0), _handler(self))
        httpd.daemon_threads = True
        return httpd


def _handler(api: JsonApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args):
            pass

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            reply = api.reply_to(method, self.path, self.headers, raw)
            data = json.dumps(reply.body).encode() if reply.body is not None and method != "HEAD" else b""
            self.send_response(reply.code)
            self.send_header("Content-Type", reply.content_type)
            for k, v in reply.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._serve("GET")

        def do_HEAD(self):
            self._serve("HEAD")

        def do_PUT(self):
            self._serve("PUT")

        def do_POST(self):
            self._serve("POST")

        def do_DELETE(self):
            self._serve("DELETE")

        def do_PATCH(self):
            self._serve("PATCH")

    return Handler
