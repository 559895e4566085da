"""Instance metadata in twins (../shared/TESTING.md): a fake metadata service at 169.254.169.254:80 on the
twin's own loopback, in its namespace, answering as the cloud's does. Only what launch meets is served:

- AWS IMDSv2: `PUT /latest/api/token` (X-aws-ec2-metadata-token-ttl-seconds) gives a token that every
  GET must carry (X-aws-ec2-metadata-token; none: 401); `/latest/meta-data/iam/security-credentials/`
  names the instance profile's role and `.../<role>` gives its temporary credentials (moto takes any
  key), 404 for an instance without a profile; `/latest/meta-data/spot/instance-action` is 404 until the
  test posts a notice, then `{"action": "terminate", "time": ...}`.

The test's state (the role, a notice) is a JSON file the server reads at each request: `set()` changes
it. The server is started with the twin and goes with it (it runs in the twin's namespace). Nothing is
ever sent to 169.254.169.254 from this machine's own namespace: the address exists only in the twin's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.infra import wait_for

ADDRESS = "169.254.169.254"

SERVER = r'''
import json, secrets, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

STATE, LOG = sys.argv[1], sys.argv[2]
TOKENS = set()


class Handler(BaseHTTPRequestHandler):
    def _send(self, code, body="", kind="text/plain"):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self):
        if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            token = secrets.token_urlsafe(24)
            TOKENS.add(token)
            return self._send(200, token)
        self._send(400)

    def do_GET(self):
        with open(LOG, "a") as f:
            f.write(self.path + "\n")
        if self.headers.get("X-aws-ec2-metadata-token") not in TOKENS:
            return self._send(401)
        with open(STATE) as f:
            state = json.load(f)
        role = state.get("role")
        creds = "/latest/meta-data/iam/security-credentials/"
        if self.path == creds:
            return self._send(200, role) if role else self._send(404)
        if role and self.path == creds + role:
            return self._send(200, json.dumps({
                "Code": "Success", "LastUpdated": "2026-12-05T00:00:00Z", "Type": "AWS-HMAC",
                "AccessKeyId": "ASIAINSTANCEROLE", "SecretAccessKey": "instance-role-secret",
                "Token": "instance-role-session", "Expiration": "2099-01-01T00:00:00Z"}), "application/json")
        if self.path == "/latest/meta-data/spot/instance-action":
            action = state.get("spot_action")
            return self._send(200, json.dumps(action), "application/json") if action else self._send(404)
        self._send(404)

    def log_message(self, *args):
        pass


class Server(HTTPServer):
    def server_bind(self):  # no getfqdn() of the address: there is no resolver in the twin
        self.socket.bind(self.server_address)
        self.server_name, self.server_port = self.server_address


# (another address and port for a test of a client on this machine's loopback)
Server((sys.argv[3] if len(sys.argv) > 3 else "169.254.169.254", int(sys.argv[4]) if len(sys.argv) > 4 else 80),
       Handler).serve_forever()
'''


def serve_locally(state_file, log_file, port: int) -> subprocess.Popen:
    """The same service on this machine's loopback (127.0.0.1:port), for a client's own test."""
    return subprocess.Popen([sys.executable, "-c", SERVER, str(state_file), str(log_file), "127.0.0.1", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Metadata:
    def __init__(self, twin, **state):
        self.twin = twin
        self.state_file = twin.dir / "metadata.json"
        self.log = twin.dir / "metadata.log"  # the paths asked, one a line
        self.set(**state)
        subprocess.run(["ip", "-n", twin.netns, "addr", "add", f"{ADDRESS}/32", "dev", "lo"], check=True)
        self.proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{twin.netns}", sys.executable, "-c", SERVER,
                                      str(self.state_file), str(self.log)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._listening, timeout=30, every=0.05, what=f"the metadata service of twin {twin.name}")

    def _listening(self) -> bool:
        r = subprocess.run(["ip", "netns", "exec", self.twin.netns, "ss", "-ltn", "sport = :80"],
                           capture_output=True, text=True)
        return f"{ADDRESS}:80" in r.stdout

    def set(self, **state) -> None:
        """The service's state from now on: role (the instance profile's role name, or None), spot_action."""
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state_file)

    def asked(self) -> list[str]:
        """The paths GET asked so far."""
        return self.log.read_text().splitlines() if self.log.exists() else []

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
