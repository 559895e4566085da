"""Instance metadata in twins (../shared/TESTING.md): a fake metadata service at 169.254.169.254:80 on the
twin's own loopback, in its namespace, answering as the cloud's does (AWS IMDSv2, the GCE metadata server,
Azure IMDS: tests/infra/metadata_server.py says what each serves).

The test's state (the cloud, a role or identity, a notice) is a JSON file the server reads at each
request: `set()` changes it. The server is started with the twin and goes with it (it runs in the twin's namespace). Nothing is
ever sent to 169.254.169.254 from this machine's own namespace: the address exists only in the twin's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.infra import wait_for

ADDRESS = "169.254.169.254"

SERVER = Path(__file__).with_name("metadata_server.py")


def serve_locally(state_file, log_file, port: int) -> subprocess.Popen:
    """The same service on this machine's loopback (127.0.0.1:port), for a client's own test."""
    return subprocess.Popen([sys.executable, str(SERVER), str(state_file), str(log_file), "127.0.0.1", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Metadata:
    """A twin's metadata service, as its cloud's (state "cloud"): it comes back when the twin boots again."""

    def __init__(self, twin, **state):
        self.twin = twin
        self.state_file = twin.dir / "metadata.json"
        self.log = twin.dir / "metadata.log"  # one JSON line per request: method, path, body
        self.proc: subprocess.Popen | None = None
        self.state: dict = {}
        self.set(**state)
        twin.metadata = self
        self.start()

    def start(self) -> None:
        """(and again when the twin boots: its processes died with it)"""
        self.close()
        subprocess.run(["ip", "-n", self.twin.netns, "addr", "replace", f"{ADDRESS}/32", "dev", "lo"], check=True)
        self.proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{self.twin.netns}", sys.executable, str(SERVER),
                                      str(self.state_file), str(self.log)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._listening, timeout=30, every=0.05, what=f"the metadata service of twin {self.twin.name}")

    def _listening(self) -> bool:
        r = subprocess.run(["ip", "netns", "exec", self.twin.netns, "ss", "-ltn", "sport = :80"],
                           capture_output=True, text=True)
        return f"{ADDRESS}:80" in r.stdout

    def set(self, **changes) -> None:
        """Change the service's state from now on (metadata_server.py names each cloud's keys)."""
        self.state = {**self.state, **changes}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, self.state_file)

    def requests(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []

    def asked(self) -> list[str]:
        """The paths GET asked so far (with their query)."""
        return [r["path"] for r in self.requests() if r["method"] == "GET"]

    def posted(self) -> list[tuple[str, str]]:
        """(path, body) of each POST so far."""
        return [(r["path"], r["body"]) for r in self.requests() if r["method"] == "POST"]

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
