"""The cluster's dashboard, served by the autoscaler's process on the head's loopback (nothing new is exposed:
`launch dashboard` reaches it through the same SSH port forward as the CLI's head connection).

Who may see it:
- a browser, with a session: `launch dashboard` puts a one-time login code on the head over SSH (a file
  named by the code's SHA-256 in DASHBOARD_LOGINS, 0600) and opens /login?code=...; the code is good once,
  for LOGIN_CODE_S by the head's own clock, and is exchanged for a session cookie (HttpOnly,
  SameSite=Strict, SESSION_S long, kept in memory only) and a redirect that takes it out of the address bar.
  No token is in any URL that outlives its use, nor in any page;
- a script, with the cluster's credential: `Authorization: Bearer <token>` on the JSON API.
Anything else gets 401 and no data. Requests whose Host is not this loopback forward are refused (a web
page elsewhere cannot rebind a name to it), and pages may load nothing but their own files (CSP).

Pages are static files (autoscaler/static/: HTML, CSS and plain JavaScript, no framework, no CDN) that poll
the JSON API (autoscaler/dashboard_data.py): /api/overview, /api/cost, /api/events, /api/jobs,
/api/jobs/ID/logs?offset=N, /api/work, /api/nodes, /api/nodes/ID.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from autoscaler import dashboard_data as data
from core.files import atomic_write
from core.paths import DASHBOARD_ADDRESS, DASHBOARD_LOGINS, on_this_node

log = logging.getLogger("launch.dashboard")
STATIC = Path(__file__).with_name("static")
LOGIN_CODE_S = 120.0
SESSION_S = 12 * 3600.0
COOKIE = "launch_session"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".svg": "image/svg+xml"}
HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
           "X-Frame-Options": "DENY"}


def code_name(code: str) -> str:
    """The file a one-time login code is kept under: its hash (the code itself is never on disk)."""
    return hashlib.sha256(code.encode()).hexdigest()


class Sessions:
    def __init__(self, token: str, logins: Path):
        self.token, self.logins = token, logins
        self.sessions: dict[str, float] = {}  # session id -> when it ends
        self.lock = threading.Lock()

    def login(self, code: str) -> str | None:
        """A new session for a one-time code `launch dashboard` put here in the last LOGIN_CODE_S; None otherwise."""
        if not code or len(code) > 200:
            return None
        path = self.logins / code_name(code)
        try:
            age = time.time() - path.stat().st_mtime
            path.unlink()  # good once, whatever its age
        except OSError:
            return None
        if age > LOGIN_CODE_S:
            return None
        session = secrets.token_urlsafe(32)
        with self.lock:
            now = time.time()
            self.sessions = {s: end for s, end in self.sessions.items() if end > now}
            self.sessions[session] = now + SESSION_S
        return session

    def allowed(self, cookie: str, authorization: str) -> bool:
        if authorization.startswith("Bearer ") and hmac.compare_digest(authorization[7:].strip().encode(),
                                                                         self.token.encode()):
            return True
        session = _cookie(cookie, COOKIE)
        with self.lock:
            end = self.sessions.get(session or "")
        return end is not None and end > time.time()


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


class Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args) -> None:  # (not the query strings: a login code is in one)
        pass

    def _send(self, code: int, body: bytes, content_type: str, extra: dict | None = None) -> None:
        self.send_response(code)
        for k, v in {**HEADERS, "Content-Type": content_type, "Content-Length": str(len(body)), **(extra or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, value) -> None:
        self._send(code, json.dumps(value).encode(), "application/json")

    def do_GET(self) -> None:  # noqa: N802  (http.server's name)
        if not _loopback((self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")):
            return self._json(421, {"error": "the dashboard answers on its loopback forward only"})
        url = urlparse(self.path)
        if url.path == "/login":
            return self._login(parse_qs(url.query).get("code", [""])[0])
        if url.path == "/style.css":  # (the login page's too: no data in it)
            return self._static("style.css", 200)
        if not self.server.sessions.allowed(self.headers.get("Cookie", ""), self.headers.get("Authorization", "")):
            if url.path.startswith("/api/"):
                return self._json(401, {"error": "log in with `launch dashboard CLUSTER.yaml`"})
            return self._static("login.html", 401)
        if url.path.startswith("/api/"):
            return self._api(url.path[5:], parse_qs(url.query))
        name = "index.html" if url.path in ("/", "/index.html") else url.path.lstrip("/")
        return self._static(name, 200)

    do_HEAD = do_GET

    def _login(self, code: str) -> None:
        session = self.server.sessions.login(code)
        if session is None:
            return self._static("login.html", 401)
        cookie = f"{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={int(SESSION_S)}"
        self._send(303, b"", "text/plain", {"Location": "/", "Set-Cookie": cookie})

    def _static(self, name: str, code: int) -> None:
        path = (STATIC / name).resolve()
        if STATIC.resolve() not in path.parents or not path.is_file() or path.suffix not in TYPES:
            return self._json(404, {"error": "not found"})
        self._send(code, path.read_bytes(), TYPES[path.suffix])

    def _api(self, route: str, query: dict) -> None:
        src = self.server.src
        arg = lambda k, d="": query.get(k, [d])[0]  # noqa: E731
        parts = route.strip("/").split("/")
        try:
            if parts == ["overview"]:
                return self._json(200, data.overview(src))
            if parts == ["cost"]:
                return self._json(200, data.cost(src))
            if parts == ["events"]:
                return self._json(200, data.events(src, arg("node_type"), arg("kind"), int(arg("limit", "500") or 500)))
            if parts == ["jobs"]:
                return self._json(200, data.jobs(src))
            if len(parts) == 3 and parts[0] == "jobs" and parts[2] == "logs":
                return self._json(200, data.job_logs(src, parts[1], max(0, int(arg("offset", "0") or 0))))
            if parts == ["work"]:
                return self._json(200, data.work(src))
            if parts == ["nodes"]:
                return self._json(200, data.nodes(src))
            if len(parts) == 2 and parts[0] == "nodes":
                found = data.node(src, parts[1])
                return self._json(200, found) if found else self._json(404, {"error": f"no node {parts[1]}"})
        except ValueError:
            return self._json(400, {"error": "a query parameter is not a number"})
        except Exception as e:  # noqa: BLE001  the head away or restarting: said, and tried afresh next time
            src.reset()
            log.warning("dashboard: %s failed: %s", route, e)
            return self._json(503, {"error": "the head service did not answer; it may be restarting"})
        return self._json(404, {"error": f"no API {route}"})


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], token: str):
        logins = on_this_node(DASHBOARD_LOGINS)
        logins.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.sessions = Sessions(token, logins)
        self.src = data.Sources(token)
        super().__init__(address, Handler)


def serve(token: str, host: str = "127.0.0.1", port: int = 0) -> DashboardServer:
    """Start the dashboard on a thread; its address goes to DASHBOARD_ADDRESS for `launch dashboard`."""
    server = DashboardServer((host, port), token)
    threading.Thread(target=server.serve_forever, name="dashboard", daemon=True).start()
    atomic_write(on_this_node(DASHBOARD_ADDRESS), f"{host}:{server.server_address[1]}", mode=0o644)
    return server
