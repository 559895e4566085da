"""The fake instance metadata service a twin runs (tests/infra/metadata.py starts it in the twin's network
namespace): python3 metadata_server.py STATE LOG [ADDRESS PORT]. Standalone: the standard library only.

STATE is a JSON file read at every request (the test changes it): {"cloud": "aws" | "gcp" | "azure", ...}.
LOG gets one JSON line per request ({"method", "path", "body"}). Each cloud is answered as its own
service answers (only the paths launch meets):

- aws (IMDSv2): `PUT /latest/api/token` with X-aws-ec2-metadata-token-ttl-seconds gives a token every GET
  must carry (none: 401). `/latest/meta-data/iam/security-credentials/` names the instance profile's role
  (state "role"; none: 404), `.../<role>` its temporary credentials; `/latest/meta-data/spot/instance-action`
  is 404 until state "spot_action" is set, `events/recommendations/rebalance` until "rebalance" is.
- gcp (the metadata server): every request needs `Metadata-Flavor: Google` (else 403), every answer
  carries it. `/` (google-auth's ping), `computeMetadata/v1/project/project-id`,
  `instance/service-accounts/default/` (?recursive=true: the account's email and scopes) and
  `instance/service-accounts/<default | email>/token` (state "service_account": the email; none: 404),
  `instance/name`, `instance/preempted` ("FALSE" until state "preempted" is true).
- azure (IMDS): every request needs `Metadata: true` (else 400). `/metadata/identity/oauth2/token`
  gives a token of a managed identity the VM has (state "identities": client ids; `client_id` picks one;
  none assigned: 400), `/metadata/instance/compute/name` the VM's name, `/metadata/scheduledevents` the
  events of state "events", and a POST there (StartRequests) acknowledges them (seen in LOG).
"""

import json
import secrets
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

STATE, LOG = sys.argv[1], sys.argv[2]
TOKENS = set()
GCE = "/computeMetadata/v1/"


def state() -> dict:
    with open(STATE) as f:
        return json.load(f)


class Handler(BaseHTTPRequestHandler):
    def _send(self, code, body="", kind="text/plain", headers=None):
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        if not isinstance(body, str):
            kind = "application/json"
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _log(self, body: str = "") -> None:
        with open(LOG, "a") as f:
            f.write(json.dumps({"method": self.command, "path": self.path, "body": body}) + "\n")

    def do_PUT(self):
        self._log()
        if state().get("cloud", "aws") == "aws" and self.path == "/latest/api/token" \
                and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            token = secrets.token_urlsafe(24)
            TOKENS.add(token)
            return self._send(200, token)
        self._send(400)

    def do_GET(self):
        self._log()
        s = state()
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        getattr(self, "_" + s.get("cloud", "aws"))(s, url.path, query)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        self._log(body)
        s = state()
        if s.get("cloud") == "azure" and urlsplit(self.path).path == "/metadata/scheduledevents" \
                and self.headers.get("Metadata") == "true":
            return self._send(200, "")
        self._send(400, "")

    def _aws(self, s, path, query):
        if self.headers.get("X-aws-ec2-metadata-token") not in TOKENS:
            return self._send(401)
        role = s.get("role")
        creds = "/latest/meta-data/iam/security-credentials/"
        if path == creds:
            return self._send(200, role) if role else self._send(404)
        if role and path == creds + role:
            return self._send(200, {
                "Code": "Success", "LastUpdated": "2026-12-05T00:00:00Z", "Type": "AWS-HMAC",
                "AccessKeyId": "ASIAINSTANCEROLE", "SecretAccessKey": "instance-role-secret",
                "Token": "instance-role-session", "Expiration": "2099-01-01T00:00:00Z"})
        if path == "/latest/meta-data/spot/instance-action":
            action = s.get("spot_action")
            return self._send(200, action) if action else self._send(404)
        if path == "/latest/meta-data/events/recommendations/rebalance":
            rebalance = s.get("rebalance")
            return self._send(200, rebalance) if rebalance else self._send(404)
        self._send(404)

    def _gcp(self, s, path, query):
        google = {"Metadata-Flavor": "Google"}
        if self.headers.get("Metadata-Flavor") != "Google":
            return self._send(403, "Missing required header: Metadata-Flavor", headers=google)
        account = s.get("service_account")
        accounts = GCE + "instance/service-accounts/"
        if path == "/":
            return self._send(200, "computeMetadata/", headers=google)
        if path == GCE + "project/project-id":
            return self._send(200, s.get("project", ""), headers=google)
        if path == GCE + "instance/name":
            return self._send(200, s.get("name", ""), headers=google)
        if path == GCE + "instance/preempted":
            return self._send(200, "TRUE" if s.get("preempted") else "FALSE", headers=google)
        if account and path in (accounts + "default/", accounts + account + "/"):
            return self._send(200, {"aliases": ["default"], "email": account,
                                    "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}, headers=google)
        if account and path in (accounts + "default/token", accounts + account + "/token"):
            return self._send(200, {"access_token": s.get("token", "instance-sa-token"), "expires_in": 3599,
                                    "token_type": "Bearer"}, headers=google)
        self._send(404, "Not Found", headers=google)

    def _azure(self, s, path, query):
        if self.headers.get("Metadata") != "true":
            return self._send(400, {"error": "invalid_request",
                                    "error_description": "Required metadata header not specified"})
        if path == "/metadata/identity/oauth2/token":
            identities = s.get("identities") or []
            wanted = query.get("client_id")
            if not identities or (wanted and wanted not in identities):
                return self._send(400, {"error": "invalid_request",
                                        "error_description": "Identity not found"})
            client = wanted or identities[0]
            return self._send(200, {"access_token": f"mi-token-{client}", "client_id": client,
                                    "expires_in": "3599", "expires_on": str(int(time.time()) + 3599),
                                    "ext_expires_in": "3599", "not_before": str(int(time.time())),
                                    "resource": query.get("resource", ""), "token_type": "Bearer"})
        if path == "/metadata/instance/compute/name":
            return self._send(200, s.get("name", ""))
        if path == "/metadata/scheduledevents":
            events = s.get("events") or []
            return self._send(200, {"DocumentIncarnation": len(events), "Events": events})
        self._send(404, {"error": "Not found"})

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self):  # no getfqdn() of the address: there is no resolver in the twin
        self.socket.bind(self.server_address)
        self.server_name, self.server_port = self.server_address


if __name__ == "__main__":
    address = sys.argv[3] if len(sys.argv) > 3 else "169.254.169.254"
    port = int(sys.argv[4]) if len(sys.argv) > 4 else 80
    Server((address, port), Handler).serve_forever()
