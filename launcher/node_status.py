"""The node status state machine. Its allowed transitions are written down here, once.

pending -> waiting-for-ssh -> syncing-files -> setting-up -> up-to-date
any (but terminating) -> update-failed; up-to-date -> draining -> terminating.
An up-to-date or failed node may be updated again (back to waiting-for-ssh), and so may a node whose
update was interrupted (the autoscaler crashed mid-setup and a new one adopts it); any node may be
terminated (down removes a cluster whatever its state).
"""

from __future__ import annotations

from enum import Enum


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
    S.DRAINING: {S.UP_TO_DATE},  # a drain can be cancelled when work arrives again
    S.TERMINATING: set(),
}
for _s in S:
    if _s is not S.TERMINATING:
        _ALLOWED[_s] |= {S.UPDATE_FAILED, S.TERMINATING}


class InvalidTransition(Exception):
    pass


def can_transition(old: NodeStatus | str, new: NodeStatus | str) -> bool:
    return NodeStatus(new) in _ALLOWED[NodeStatus(old)]


def check_transition(old: NodeStatus | str, new: NodeStatus | str) -> NodeStatus:
    if not can_transition(old, new):
        raise InvalidTransition(f"node status cannot go from {old} to {new}")
    return NodeStatus(new)
