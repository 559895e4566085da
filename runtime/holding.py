"""The values this process holds refs to are kept on the head past their retention, as Ray keeps an
object while a reference to it lives: every HOLD_RENEW_S the ids of the live ObjectRefs here (a driver,
or a task or actor holding refs) go to the head, which keeps those values HOLD_S more.

Counted with a weak set, not by hand in __init__/__del__: a collection that runs in the middle of an
update could otherwise lose one, and a value dropped too early is a value lost."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable

from runtime.limits import HOLD_BATCH, HOLD_RENEW_S

LIVE: weakref.WeakSet = weakref.WeakSet()  # the ObjectRefs alive in this process
_started = False
_lock = threading.Lock()


def held_ids() -> list[str]:
    return sorted({ref.id for ref in list(LIVE)})


def renew(client) -> None:
    """Tell the head which values this process holds refs to (in batches)."""
    ids = held_ids()
    for start in range(0, len(ids), HOLD_BATCH):
        client.hold(ids[start:start + HOLD_BATCH])


def start(client_of: Callable[[], object]) -> None:
    """A thread renewing the holds while the process lives (once per process); client_of(): the head
    client now, or None while there is none."""
    global _started
    with _lock:
        if _started:
            return
        _started = True
    threading.Thread(target=_loop, args=(client_of,), name="launch-hold", daemon=True).start()


def _loop(client_of) -> None:
    while True:
        time.sleep(HOLD_RENEW_S)  # a lease renewed on a period, not a wait for anything
        client = client_of()
        if client is not None:
            try:
                renew(client)
            except Exception:  # noqa: BLE001  the head away now: renewed next time, well before HOLD_S
                pass
