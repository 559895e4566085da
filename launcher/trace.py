"""A workload trace for `launch simulate`: JSON lines, one task each,

    {"t": 0, "resources": {"CPU": 1}, "duration": 600, "spot_ok": true, "name": "etl"}

`t`: seconds from the trace's start when the task is submitted; `duration`: how long it runs once started;
`resources`: what it asks for ({"CPU": 1} when left out, as a Ray task); `spot_ok` (true when left out):
false keeps it off spot nodes; `name`: free text. The JSON array `launch job list --json` prints is read
as a trace too (each job that ran to its end: submitted at its `submitted_at`, for as long as it ran), and
`launch job list --trace` prints that conversion as JSON lines.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.errors import ConfigError
from runtime.work import InvalidRequest, validate_request

MAX_TASKS = 2_000_000
MAX_LINE = 10_000


@dataclass(frozen=True)
class TraceTask:
    t: float
    duration: float
    resources: dict[str, float] = field(default_factory=lambda: {"CPU": 1.0})
    spot_ok: bool = True
    name: str = ""

    def as_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v != "" and v is not True})


def _number(value, what: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{where}: {what} must be a number >= 0 (got {json.dumps(value)[:40]})")
    return float(value)


def task_of(entry, where: str) -> TraceTask:
    """One trace line, checked: a wrong field is named with its line."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: a trace line is a JSON object like "
                          '{"t": 0, "resources": {"CPU": 1}, "duration": 600}')
    unknown = sorted(set(entry) - {"t", "duration", "resources", "spot_ok", "name"})
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r} (t, duration, resources, spot_ok, name)")
    for key in ("t", "duration"):
        if key not in entry:
            raise ConfigError(f"{where}: {key} is required")
    resources = entry.get("resources", {"CPU": 1.0})
    if not isinstance(resources, dict) or not all(isinstance(k, str) and k for k in resources):
        raise ConfigError(f"{where}: resources must be an object of names to amounts, like {{\"CPU\": 1}}")
    amounts = {k: _number(v, f"resources.{k}", where) for k, v in resources.items()}
    try:
        validate_request(amounts)  # the runtime's own rules for a request
    except InvalidRequest as e:
        raise ConfigError(f"{where}: resources: {e}") from None
    spot_ok = entry.get("spot_ok", True)
    if not isinstance(spot_ok, bool):
        raise ConfigError(f"{where}: spot_ok must be true or false")
    return TraceTask(_number(entry["t"], "t", where), _number(entry["duration"], "duration", where), amounts,
                     spot_ok, str(entry.get("name", ""))[:200])


def trace_from_jobs(rows: list, where: str) -> list[TraceTask]:
    """`launch job list --json` as a trace: the jobs that ran to their end, each submitted when it was (the
    first submission is t=0) and running as long as it ran; jobs still queued or running are left out."""
    times = ("submitted_at", "started_at", "finished_at")
    ran = [r for r in rows if isinstance(r, dict) and all(
        isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) and r[k] > 0 for k in times)] \
        if isinstance(rows, list) else []
    if not ran:
        raise ConfigError(f"{where}: no job in it ran to its end (a trace needs started_at and finished_at: "
                          "the output of `launch job list --json`)")
    start = min(float(r["submitted_at"]) for r in ran)
    return [TraceTask(float(r["submitted_at"]) - start, max(0.0, float(r["finished_at"]) - float(r["started_at"])),
                      {str(k): _number(v, f"resources.{k}", f"{where} job {r.get('id')}")
                       for k, v in dict(r.get("resources") or {}).items()}, True, str(r.get("name", ""))[:200])
            for r in sorted(ran, key=lambda r: r["submitted_at"])]


def read_trace(path: Path) -> list[TraceTask]:
    """The tasks of a trace file (JSON lines), or of a job list (a JSON array), by submission time."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
        return trace_from_jobs(rows, str(path))
    tasks = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path} line {n}"
        if len(line) > MAX_LINE:
            raise ConfigError(f"{where}: longer than {MAX_LINE} characters")
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: not JSON ({e.msg})") from None
        tasks.append(task_of(entry, where))
        if len(tasks) > MAX_TASKS:
            raise ConfigError(f"{path}: more than {MAX_TASKS:,} tasks")
    if not tasks:
        raise ConfigError(f"{path}: no task in it (JSON lines like "
                          '{"t": 0, "resources": {"CPU": 1}, "duration": 600})')
    return sorted(tasks, key=lambda task: task.t)
