"""How `up` and `down` reach the cluster's one reconciler, the monitor on the head (autoscaler.monitor).

`up` ships a spec with a new generation and starts or signals the monitor (`python -m runtime.node
start-monitor`); the monitor checks every worker once in that generation (launches what min_workers
asks, updates what changed, restarts runtimes that stopped or were asked to restart, replaces outdated
workers) and writes what it did and what it still waits for in its status file as a `Round`. `up` reads
it until the round has converged, saying each new action as it happens. `down` asks the monitor to
remove every worker and stop (`stop-monitor --down`), then sweeps from the laptop for anything left.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from core.entry_points import NODE_CONTROL
from core.errors import LaunchError
from core.paths import MONITOR_STATUS, for_node
from runtime.node import DOWN_RESULT
from transport.base import CommandRunner, node_name

POLL_S = 0.3
SILENT_AFTER_S = 60.0  # a monitor that has not ticked for this long is not working on the round


@dataclass
class Round:
    """What the monitor did and still waits for in one generation of the spec (status file: "round")."""

    generation: int
    converged: bool = False
    waiting: list[str] = field(default_factory=list)  # "<node or type>: <what it waits for>"
    actions: list[str] = field(default_factory=list)  # "worker <id>: set up", as `up` prints them
    failures: list[dict] = field(default_factory=list)  # NodeUpdateFailed.as_dict() of workers that failed
    errors: list[str] = field(default_factory=list)  # node types that could not be launched, and why

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Round:
        return cls(**{k: d[k] for k in ("generation", "converged", "waiting", "actions", "failures", "errors")
                      if k in d})


def signal_monitor(runner: CommandRunner) -> None:
    """Start the monitor, or have a running one read the spec just shipped at once."""
    done = runner.run(f"{runner.python} -m {NODE_CONTROL} start-monitor", timeout=60)
    if not done.ok:
        raise LaunchError(f"the autoscaler did not start on the head: {done.tail[-1] if done.tail else 'no output'}")


def read_status(runner: CommandRunner) -> dict:
    raw = runner.read_file(for_node(MONITOR_STATUS, node_name(runner)))
    try:
        return json.loads(raw) if raw else {}
    except ValueError:  # caught mid-write by a reader without atomic rename (it is written atomically)
        return {}


def wait_for_round(runner: CommandRunner, generation: int, say: Callable[[str], None], timeout_s: float,
                   sleep: Callable[[float], None] = time.sleep) -> Round:
    """Read the monitor's status until its round of `generation` has converged; says each new action and,
    when it changes, what the round waits for. A monitor that stops ticking, or a round that does not
    converge within `timeout_s`, is an error that names what it still waited for."""
    said: set[str] = set()
    waiting: list[str] = []
    started = time.monotonic()
    last_tick, last_change = None, time.monotonic()
    while True:
        status = read_status(runner)
        if status.get("updated_at") != last_tick:
            last_tick, last_change = status.get("updated_at"), time.monotonic()
        got = Round.from_dict(status["round"]) if isinstance(status.get("round"), dict) else None
        if got is not None and got.generation == generation:
            for action in got.actions:
                if action not in said:
                    said.add(action)
                    say(action)
            if got.converged:
                return got
            if got.waiting != waiting:
                waiting = got.waiting
                say("waiting for " + "; ".join(waiting[:5]) + (f" (+{len(waiting) - 5} more)" if len(waiting) > 5 else ""))
        now = time.monotonic()
        if now - last_change > SILENT_AFTER_S:
            raise LaunchError(f"the autoscaler on the head has not worked for {SILENT_AFTER_S:.0f}s; "
                              "see `launch monitor`")
        if now - started > timeout_s:
            raise LaunchError(f"the cluster did not converge within {timeout_s / 60:.0f} min; still waiting for "
                              f"{'; '.join(waiting) or 'the autoscaler'} (it keeps working: `launch monitor`)")
        sleep(POLL_S)


def monitor_down(runner: CommandRunner, keep_stopped: bool, say: Callable[[str], None]) -> int:
    """Have the monitor remove every worker (terminate, or stop with `keep_stopped`) and stop; how many
    it removed. An error when it is not running or could not: `down` removes them from the laptop then."""
    result: dict = {}

    def line(text: str) -> None:
        text = text.rstrip("\n")
        if text.startswith(DOWN_RESULT):
            result.update(json.loads(text[len(DOWN_RESULT):]))
        elif text.strip():
            say(text)

    args = " --keep-stopped" if keep_stopped else ""
    done = runner.run(f"{runner.python} -m {NODE_CONTROL} stop-monitor --down{args}", on_output=line)
    if "error" in result:
        raise LaunchError(result["error"])
    if not done.ok or "removed" not in result:
        raise LaunchError(f"the autoscaler did not remove the workers (exit {done.exit_code}): "
                          f"{done.tail[-1] if done.tail else 'no output'}")
    return int(result["removed"])
