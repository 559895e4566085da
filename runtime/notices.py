"""Preemption notices: what the cloud's instance metadata service says before it takes a spot node back.

A spot node's agent asks every NOTICE_POLL_S (runtime/agent.py) and, once a notice is there, says it in
its heartbeats: the head drains the node and counts its work as demand, so the autoscaler launches the
replacement while the node still runs (rather than after its heartbeats stop).

- aws: IMDSv2 (a session token, then `/latest/meta-data/spot/instance-action`: 404 until EC2 decides,
  then {"action": "terminate" | "stop" | "hibernate", "time": "2026-12-05T10:00:00Z"}, two minutes ahead),
  and `events/recommendations/rebalance` ({"noticeTime": ...}: the instance is at elevated risk, earlier).
- gcp: the metadata server's `instance/preempted` ("TRUE" once GCE preempts the VM, about 30 s ahead:
  it says no time, so the deadline is 30 s from when it was first seen).
- azure: Scheduled Events (`/metadata/scheduledevents`): a `Preempt` event naming this VM, with its
  NotBefore time (about 30 s ahead). Azure lets the VM go early once the event is acknowledged (a POST of
  StartRequests): the agent does that once the node has nothing left running (`acknowledge`).
- slurm: every allocation ends, at its time limit or when a job of higher priority preempts it. The
  holder job asks Slurm to signal its shell `notice_s` ahead (sbatch --signal=B:USR1@notice_s, which a
  site's PreemptParameters=send_user_signal also sends at a preemption); the shell notes the time in
  HOLDER_SIGNALLED, and the job's end time (squeue %e) is the deadline.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path

from core.paths import HOLDER_SIGNALLED, on_this_node

IMDS = "http://169.254.169.254"
NOTICE_POLL_S = 2.0  # AWS suggests every 5 s; the notice comes 2 minutes ahead
TIMEOUT_S = 1.0
SLURM_FALLBACK_S = 60.0  # a Slurm job's end when squeue cannot say: this long after its signal


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

    def _get(self, path: str, again: bool = True):
        """The JSON at `path`, or None while EC2 has none there (404)."""
        try:
            req = urllib.request.Request(f"{self.base}{path}", headers={"X-aws-ec2-metadata-token": self._token()})
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code == 401 and again:  # the session token expired: a new one, asked once
                self.token = ""
                return self._get(path, again=False)
            return None

    def check(self) -> Notice | None:
        """The notice, if EC2 gave one; None if none (or the service does not answer: asked again later).
        A rebalance recommendation (the instance at elevated risk) is taken as a notice too, as AWS advises:
        the node is replaced ahead of the interruption it warns of (its deadline unknown: two minutes)."""
        try:
            action = self._get("/latest/meta-data/spot/instance-action")
            if action is None:
                rebalance = self._get("/latest/meta-data/events/recommendations/rebalance")
                if rebalance is None:
                    return None
                return Notice(time.time() + 120.0, f"spot rebalance recommendation at {rebalance.get('noticeTime', 'now')}"
                              " (EC2: elevated risk of interruption)")
        except (OSError, ValueError, AttributeError):
            return None
        try:
            at = datetime.strptime(action["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
        except (KeyError, TypeError, ValueError):
            at = time.time() + 120.0
        return Notice(at, f"spot {action.get('action', 'terminate')} at {action.get('time', 'soon')}")


class GceNotices:
    NOTICE_S = 30.0  # GCE's preemption notice

    def __init__(self, base: str = IMDS):
        self.base = base
        self.first_seen = 0.0

    def check(self) -> Notice | None:
        try:
            req = urllib.request.Request(f"{self.base}/computeMetadata/v1/instance/preempted",
                                         headers={"Metadata-Flavor": "Google"})
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
                preempted = r.read().decode().strip().upper() == "TRUE"
        except (OSError, ValueError):
            return None
        if not preempted:
            return None
        self.first_seen = self.first_seen or time.time()
        return Notice(self.first_seen + self.NOTICE_S, "spot VM preempted by GCE")


class AzureNotices:
    API = "api-version=2020-07-01"
    KINDS = ("Preempt",)  # (Reboot, Redeploy, Freeze: maintenance the VM survives)

    def __init__(self, base: str = IMDS):
        self.base = base
        self.vm_name = ""
        self.event_id = ""

    def _get(self, path: str) -> bytes:
        req = urllib.request.Request(f"{self.base}{path}", headers={"Metadata": "true"})
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
            return r.read()

    def check(self) -> Notice | None:
        try:
            if not self.vm_name:
                self.vm_name = self._get("/metadata/instance/compute/name?api-version=2021-02-01&format=text").decode()
            events = json.loads(self._get(f"/metadata/scheduledevents?{self.API}")).get("Events") or []
        except (OSError, ValueError, AttributeError):
            return None
        for e in events:
            if e.get("EventType") in self.KINDS and self.vm_name in (e.get("Resources") or []):
                self.event_id = e.get("EventId", "")
                try:
                    at = parsedate_to_datetime(e["NotBefore"]).timestamp()
                except (KeyError, TypeError, ValueError):
                    at = time.time() + 30.0
                return Notice(at, f"spot VM evicted by Azure ({e['EventType']}, not before {e.get('NotBefore', 'soon')})")
        return None

    def acknowledge(self) -> bool:
        """Tell Azure the node is ready to go (nothing runs on it): it goes now, not at the deadline."""
        body = json.dumps({"StartRequests": [{"EventId": self.event_id}]}).encode()
        req = urllib.request.Request(f"{self.base}/metadata/scheduledevents?{self.API}", data=body, method="POST",
                                     headers={"Metadata": "true", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S):
                return True
        except OSError:
            return False


class SlurmNotices:
    def __init__(self, signalled: Path | None = None):
        self.signalled = signalled or on_this_node(HOLDER_SIGNALLED)
        self.job = os.environ.get("SLURM_JOB_ID", "")

    def check(self) -> Notice | None:
        try:
            at = float(self.signalled.read_text().strip() or 0) + SLURM_FALLBACK_S
        except (OSError, ValueError):
            return None
        end = ""
        try:  # the job's end: its time limit, or now plus the partition's GraceTime once it is preempted
            out = subprocess.run(["squeue", "-h", "-j", self.job, "-o", "%e"], capture_output=True, text=True,
                                 timeout=10).stdout.strip()
            at, end = datetime.fromisoformat(out).timestamp(), out
        except (OSError, ValueError, subprocess.SubprocessError):
            pass  # (no squeue here: the signal's own time serves)
        return Notice(at, f"Slurm job {self.job} ends at {end or 'soon'} (its time limit, or preempted)")


def watcher(kind: str):
    """The notice source of a cloud (None: it gives none)."""
    return {"aws": AwsNotices, "gcp": GceNotices, "azure": AzureNotices, "slurm": SlurmNotices}.get(
        kind, lambda: None)()
