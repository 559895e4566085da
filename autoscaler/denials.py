"""What the head's cloud identity was refused (a part of the Monitor, autoscaler/monitor.py).

A head's credentials are its instance's (an AWS instance profile, a GCP service account, an Azure managed
identity), and a role a user trimmed may lack a permission the autoscaler needs. Each refusal is said
once in the autoscaler's log (`permission-denied`, with the permission the cloud named) and as one line
in `launch status` until the call works again (`permission-granted`); the call is retried with backoff
meanwhile: a tick that fails by its delay, a launch by its node type's.
"""

from __future__ import annotations

import json

from core.backoff import Backoff
from core.errors import PermissionDenied
from core.files import atomic_write
from core.paths import MONITOR_STATUS, on_this_node

TICK = "the autoscaler's tick"


class Denials:
    """Monitor's refusals, by where they happened ("the autoscaler's tick", or a node type's launch). Its
    state is the Monitor's (`denied`, set in Monitor.__init__): a part of Monitor, not used alone."""

    def deny(self, where: str, error: PermissionDenied, retry_in_s: float) -> None:
        known = self.denied.get(where)
        what = error.permission or "a permission"
        self.denied[where] = {"where": where, "permission": error.permission, "error": str(error),
                              "since": known["since"] if known else self.clock(), "retry_in_s": round(retry_in_s, 1),
                              "line": f"the head's cloud identity lacks {what} ({where}): {error}"}
        if known is None or known["error"] != str(error):
            self.event("permission-denied", where=where, permission=error.permission, error=str(error),
                       retry_in_s=round(retry_in_s, 1))

    def tick_unless_refused(self, refused: Backoff) -> float:
        """A tick; one the cloud refuses is said, and the next waits the delay this returns (0: none)."""
        try:
            self.tick()
        except PermissionDenied as e:  # retried with backoff until the identity is given what it lacks
            delay = refused.fail(self.clock(), str(e))
            self.deny(TICK, e, delay)
            self.write_denials()
            return delay
        refused.failures = 0
        self.allow(TICK)
        return 0.0

    def allow(self, where: str) -> None:
        if self.denied.pop(where, None) is not None:
            self.event("permission-granted", where=where)

    def denials_status(self) -> list[dict]:
        return sorted(self.denied.values(), key=lambda d: d["where"])

    def write_denials(self) -> None:
        """(a tick that failed: no report was written) The last status, with the refusals and this time: the
        autoscaler runs, it is blocked."""
        path = on_this_node(MONITOR_STATUS)
        try:
            status = json.loads(path.read_text())
        except (OSError, ValueError):
            status = {}
        status.update(denied=self.denials_status(), updated_at=self.clock())
        atomic_write(path, json.dumps(status, indent=1, sort_keys=True), mode=0o644)
