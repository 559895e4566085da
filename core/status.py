"""The node status state machine. Its allowed transitions are written down here, once.

pending -> waiting-for-ssh -> syncing-files -> setting-up -> up-to-date
any (but terminating) -> update-failed; up-to-date -> draining -> terminating; draining -> up-to-date
(undrain when demand returns). An up-to-date or failed node may be updated again (back to
waiting-for-ssh), and so may a node whose update was interrupted (a new autoscaler adopts it); any node
may be terminated (down removes a cluster whatever its state).

A status is written with the time it was entered (`status_tags`), so timeouts count from when a node
entered its current status, not from its launch: an old node interrupted mid-setup is adopted, not
replaced as stuck.
"""

from __future__ import annotations

from enum import Enum

from core.tags import TAG_STATUS, TAG_STATUS_SINCE


class NodeStatus(str, Enum):
    PENDING = "pending"
    WAITING_FOR_SSH = "waiting-for-ssh"
    SYNCING_FILES = "syncing-files"
    SETTING_UP = "setting-up"
    UP_TO_DATE = "up-to-date"
    UPDATE_FAILED = "update-failed"
    DRAINING = "draining"
    TERMINATING = "terminating"

    def __str__(self) -> str:
        return self.value


S = NodeStatus
_ALLOWED: dict[NodeStatus, set[NodeStatus]] = {
    S.PENDING: {S.WAITING_FOR_SSH},
    S.WAITING_FOR_SSH: {S.SYNCING_FILES, S.WAITING_FOR_SSH},
    S.SYNCING_FILES: {S.SETTING_UP, S.WAITING_FOR_SSH},
    S.SETTING_UP: {S.UP_TO_DATE, S.WAITING_FOR_SSH},
    S.UP_TO_DATE: {S.WAITING_FOR_SSH, S.DRAINING},
    S.UPDATE_FAILED: {S.WAITING_FOR_SSH},
    S.DRAINING: {S.UP_TO_DATE},  # undrain: work arrived again
    S.TERMINATING: set(),
}
for _s in S:
    if _s is not S.TERMINATING:
        _ALLOWED[_s] |= {S.UPDATE_FAILED, S.TERMINATING}

# Statuses of a node that is being brought up (set-up may be adopted by a new autoscaler).
SETTING_UP = (S.PENDING, S.WAITING_FOR_SSH, S.SYNCING_FILES, S.SETTING_UP)
# Statuses of a node that is, or will be, capacity.
LIVE = (*SETTING_UP, S.UP_TO_DATE)


class InvalidTransition(Exception):
    """A status change the machine forbids: a bug in the caller, reported with both statuses."""


def parse_status(value: str | None) -> NodeStatus:
    """The status a tag holds; a missing tag is a node just created (pending). Unknown text is an error."""
    if not value:
        return S.PENDING
    try:
        return NodeStatus(value)
    except ValueError:
        raise InvalidTransition(f"unknown node status {value!r}") from None


def can_transition(old: NodeStatus | str, new: NodeStatus | str) -> bool:
    return NodeStatus(new) in _ALLOWED[NodeStatus(old)]


def check_transition(old: NodeStatus | str, new: NodeStatus | str) -> NodeStatus:
    if not can_transition(old, new):
        raise InvalidTransition(f"node status cannot go from {old} to {new}")
    return NodeStatus(new)


def status_tags(old: NodeStatus | str, new: NodeStatus, now: float) -> dict[str, str]:
    """The tags that move a node from `old` to `new` at `now`; InvalidTransition if not allowed."""
    check_transition(old, new)
    return {TAG_STATUS: new.value, TAG_STATUS_SINCE: f"{now:.3f}"}


def initial_status_tags(now: float) -> dict[str, str]:
    return {TAG_STATUS: S.PENDING.value, TAG_STATUS_SINCE: f"{now:.3f}"}
