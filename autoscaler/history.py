"""What the dashboard shows of the past, kept on the head's disk by the autoscaler (so it survives a head or
monitor restart) and bounded in size:

- the fleet's cost over time (COST_HISTORY, JSON lines): a record once a minute and whenever the fleet
  changes, each with the nodes by type and market, the $/h, and the dollars spent so far (today's and
  this run's are differences of `total_usd`); the oldest records are dropped past HISTORY_KEEP;
- the autoscaler's event log (autoscaler.log, JSON lines): rotated to autoscaler.log.1 past EVENTS_MAX_BYTES.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from core.files import atomic_write, open_private

HISTORY_EVERY_S = 60.0
HISTORY_KEEP = 20_000  # two weeks at one a minute
RUN_GAP_S = 600.0  # no record for this long: the cluster was down (nothing was spent), a new run starts
EVENTS_MAX_BYTES = 8 * 2**20


def _last_line(path: Path) -> dict | None:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 65536))
            lines = f.read().splitlines()
    except OSError:
        return None
    for raw in reversed(lines):
        try:
            return json.loads(raw)
        except ValueError:  # a line cut by a crash mid-write
            continue
    return None


class CostHistory:
    """The monitor's writer of COST_HISTORY (one per monitor; the dashboard reads the file)."""

    def __init__(self, path: Path):
        self.path = path
        self.last = _last_line(path)
        self.lines = sum(1 for _ in open(path, "rb")) if path.exists() else 0

    def record(self, now: float, fleet: dict[str, dict]) -> None:
        """`fleet`: node type -> {"count", "per_hour" (each node), "spot"}. Appended when a minute passed or
        the fleet changed; the money between two records is the earlier one's $/h over the time between."""
        nodes = {t: {"count": f["count"], "spot": bool(f["spot"])} for t, f in sorted(fleet.items()) if f["count"]}
        per_hour = round(sum(f["count"] * f["per_hour"] for f in fleet.values()), 6)
        spot = round(sum(f["count"] * f["per_hour"] for f in fleet.values() if f["spot"]), 6)
        last = self.last
        if last is not None and last["nodes"] == nodes and last["per_hour"] == per_hour \
                and now - last["t"] < HISTORY_EVERY_S:
            return
        if last is None or now - last["t"] > RUN_GAP_S or now < last["t"]:
            total, run_start, run_usd = (last or {}).get("total_usd", 0.0), now, 0.0
        else:
            spent = last["per_hour"] * (now - last["t"]) / 3600
            total, run_start, run_usd = last["total_usd"] + spent, last["run_start"], last["run_usd"] + spent
        self.last = {"t": round(now, 3), "per_hour": per_hour, "spot_per_hour": spot, "nodes": nodes,
                     "total_usd": round(total, 6), "run_start": run_start, "run_usd": round(run_usd, 6)}
        try:
            with open_private(self.path, "a") as f:
                f.write(json.dumps(self.last, sort_keys=True) + "\n")
            self.lines += 1
            if self.lines > 2 * HISTORY_KEEP:
                kept = self.path.read_text().splitlines()[-HISTORY_KEEP:]
                atomic_write(self.path, "\n".join(kept) + "\n")
                self.lines = len(kept)
        except OSError:  # a full disk: the record is lost, the next one carries the sums on
            pass


def read_history(path: Path) -> list[dict]:
    out = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
    except OSError:
        pass
    return out


def spent_since(records: list[dict], since: float, now: float) -> float:
    """Dollars spent from `since` to `now`, from the records (within a run, the $/h of the record before)."""
    total = 0.0
    for i, r in enumerate(records):
        end = records[i + 1]["t"] if i + 1 < len(records) else now
        if i + 1 < len(records) and records[i + 1]["run_start"] != r["run_start"]:
            end = r["t"]  # the run ended here: the cluster was down until the next
        start, end = max(r["t"], since), min(end, now)
        if end > start:
            total += r["per_hour"] * (end - start) / 3600
    return total


def rotate_events(path: Path) -> bool:
    """The event log past EVENTS_MAX_BYTES moves to .1 (the one before is dropped). Returns whether it did."""
    try:
        if path.stat().st_size <= EVENTS_MAX_BYTES:
            return False
        os.replace(path, path.with_name(path.name + ".1"))
        return True
    except OSError:
        return False


def read_events(path: Path, limit: int = 2000) -> list[dict]:
    """The last `limit` events (the rotated file's too, when the current one has fewer)."""
    out: list[dict] = []
    for p in (path, path.with_name(path.name + ".1")):
        try:
            with open(p, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4 * 2**20))
                lines = f.read().splitlines()
        except OSError:
            continue
        for raw in reversed(lines):
            try:
                out.append(json.loads(raw))
            except ValueError:
                continue
            if len(out) >= limit:
                return out[::-1]
    return out[::-1]
