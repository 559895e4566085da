"""`launch dashboard` as a user runs it, for the tests that open a cluster's dashboard."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

from tests.infra import ROOT


class Dashboard:
    """`launch dashboard FILE --no-browser`, running as a user runs it: its one-time link, and its forward
    held until it is stopped."""

    def __init__(self, path: Path, home: Path):
        env = {**os.environ, "LAUNCH_HOME": str(home), "COLUMNS": "300"}
        self.proc = subprocess.Popen([sys.executable, "-m", "launcher", "dashboard", str(path), "--no-browser"],
                                     cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("Dashboard of ") and ": http://" in line, line + self.proc.stderr.read()
        self.url = line.split(": ", 1)[1].strip()
        parsed = urlparse(self.url)
        self.host, self.port = parsed.hostname, parsed.port

    def get(self, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        conn.request("GET", path, headers={"Host": f"{self.host}:{self.port}", **(headers or {})})
        r = conn.getresponse()
        body = r.read()
        conn.close()
        return r.status, dict(r.getheaders()), body

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def login(self) -> str:
        """Follows the one-time link as a browser does; the session cookie ("name=value") it gives."""
        path = urlparse(self.url)._replace(scheme="", netloc="").geturl()
        status, headers, _ = self.get(path)
        assert status == 303, status
        return headers["Set-Cookie"].split(";")[0]
