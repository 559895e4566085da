"""The preemption hook: a task or actor running on a spot node its cloud is taking back is told, within
the notice's time (two minutes on AWS), so it can checkpoint.

    runtime.on_preemption(lambda notice: save_checkpoint())   # notice: {"at": unix time, "reason": ...}
    runtime.get_runtime_context().preempting                   # True once the notice came

The node's agent (runtime/agent.py) writes the notice to a file every worker's environment names
(PREEMPT_FILE_ENV) and signals each worker process (SIGUSR1): the handler here calls the callbacks on the
worker's main thread, between two steps of the task (a `time.sleep` is woken for it, then goes on). What
has not finished when the node goes runs again elsewhere, without costing one of its retries.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from collections.abc import Callable

PREEMPT_FILE_ENV = "LAUNCH_PREEMPT_FILE"
PREEMPT_SIGNAL = signal.SIGUSR1

_callbacks: list[Callable[[dict], None]] = []
_called: set[int] = set()


def notice() -> dict | None:
    """The node's preemption notice ({"at", "reason"}), if its cloud gave one."""
    path = os.environ.get(PREEMPT_FILE_ENV)
    if not path:
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def on_preemption(callback: Callable[[dict], None]) -> None:
    """Call `callback(notice)` once if the node this runs on is preempted (at once if it already is)."""
    if not callable(callback):
        raise TypeError(f"on_preemption: a callable is needed (got {type(callback).__name__})")
    _callbacks.append(callback)
    if notice() is not None:
        _run()


def _run() -> None:
    given = notice()
    if given is None:
        return
    for cb in list(_callbacks):
        if id(cb) in _called:
            continue
        _called.add(id(cb))
        try:
            cb(given)
        except Exception:  # noqa: BLE001  a hook that fails is the task's to see in its log, not a crash
            traceback.print_exc(file=sys.stderr)


def install() -> None:
    """(a worker process) Run the callbacks when the agent signals a notice."""
    signal.signal(PREEMPT_SIGNAL, lambda *_: _run())
