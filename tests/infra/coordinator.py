"""A coordinator server as Ray documents it (`coordinator_server.py --ips ... --port ...`): one pool of
hosts shared by clusters, handed out over Ray's protocol (an HTTP GET whose JSON body is {"type":
method, "args": [...]}, answered with the result as JSON). Written from that protocol: a host is
"terminated" (free) or "running" with the tags its cluster gave it; `create_node` hands out free hosts,
`terminate_node` frees one; a call that fails (an unknown host, a create without `ray-node-kind`) gets
its connection closed with no answer, as Ray's server does."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeCoordinator:
    def __init__(self, ips: list[str], host: str = "127.0.0.1"):
        self.hosts = {ip: {"state": "terminated", "tags": {}} for ip in ips}
        self.lock = threading.Lock()
        self.calls: list[str] = []
        coordinator = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    request = json.loads(body)
                    result = coordinator.call(request["type"], *request["args"])
                except Exception:  # noqa: BLE001  as Ray's server: no answer at all
                    self.close_connection = True
                    return
                data = json.dumps(result).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.address = f"{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def call(self, method: str, *args):
        with self.lock:
            self.calls.append(method)
            return getattr(self, f"_{method}")(*args)

    def _non_terminated_nodes(self, tag_filters: dict) -> list[str]:
        return [ip for ip, h in self.hosts.items() if h["state"] != "terminated"
                and all(h["tags"].get(k) == v for k, v in tag_filters.items())]

    def _create_node(self, node_config: dict, tags: dict, count: int) -> None:
        tags["ray-node-kind"]  # noqa: B018  (Ray's server needs it: a KeyError closes the connection)
        for h in self.hosts.values():
            if count and h["state"] == "terminated":
                h.update(state="running", tags=dict(tags))
                count -= 1

    def _terminate_node(self, node_id: str) -> None:
        self.hosts[node_id]["state"] = "terminated"

    def _node_tags(self, node_id: str) -> dict:
        return self.hosts[node_id]["tags"]

    def _set_node_tags(self, node_id: str, tags: dict) -> None:
        self.hosts[node_id]["tags"].update(tags)

    def _is_running(self, node_id: str) -> bool:
        return self.hosts[node_id]["state"] == "running"

    def _internal_ip(self, node_id: str) -> str:
        self.hosts[node_id]  # noqa: B018
        return node_id

    def running(self) -> dict[str, dict]:
        """The hosts given out now, with their tags."""
        with self.lock:
            return {ip: dict(h["tags"]) for ip, h in self.hosts.items() if h["state"] == "running"}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
