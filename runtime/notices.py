"""Preemption notices: what the cloud's instance metadata service says before it takes a spot node back.

A spot node's agent asks every NOTICE_POLL_S (runtime/agent.py) and, once a notice is there, says it in
its heartbeats: the head drains the node and counts its work as demand, so the autoscaler launches the
replacement while the node still runs (rather than after its heartbeats stop).

- aws: IMDSv2 (a session token, then `/latest/meta-data/spot/instance-action`: 404 until EC2 decides,
  then {"action": "terminate" | "stop" | "hibernate", "time": "2026-12-05T10:00:00Z"}, two minutes ahead).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone

IMDS = "http://169.254.169.254"
NOTICE_POLL_S = 2.0  # AWS suggests every 5 s; the notice comes 2 minutes ahead
TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Notice:
    at: float  # when the cloud takes the node (unix time)
    reason: str


class AwsNotices:
    def __init__(self, base: str = IMDS):
        self.base = base
        self.token = ""

    def _token(self) -> str:
        if not self.token:
            req = urllib.request.Request(f"{self.base}/latest/api/token", method="PUT",
                                         headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
                self.token = r.read().decode()
        return self.token

    def check(self) -> Notice | None:
        """The notice, if EC2 gave one; None if none (or the service does not answer: asked again later)."""
        try:
            req = urllib.request.Request(f"{self.base}/latest/meta-data/spot/instance-action",
                                         headers={"X-aws-ec2-metadata-token": self._token()})
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
                action = json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code == 401:
                self.token = ""  # expired: a new one next time
            return None
        except (OSError, ValueError):
            return None
        try:
            at = datetime.strptime(action["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
        except (KeyError, TypeError, ValueError):
            at = time.time() + 120.0
        return Notice(at, f"spot {action.get('action', 'terminate')} at {action.get('time', 'soon')}")


def watcher(kind: str):
    """The notice source of a cloud (None: it gives none)."""
    return {"aws": AwsNotices}.get(kind, lambda: None)()
