"""The node status machine: the documented path is allowed, shortcuts are not."""

import pytest

from core.status import InvalidTransition, NodeStatus as S, can_transition, check_transition

PATH = [S.PENDING, S.WAITING_FOR_SSH, S.SYNCING_FILES, S.SETTING_UP, S.UP_TO_DATE, S.DRAINING, S.TERMINATING]


def test_the_happy_path_is_allowed():
    for old, new in zip(PATH, PATH[1:]):
        assert check_transition(old, new) is new


@pytest.mark.parametrize("old,new", [
    (S.PENDING, S.UP_TO_DATE),          # no skipping setup
    (S.PENDING, S.SETTING_UP),
    (S.WAITING_FOR_SSH, S.SETTING_UP),  # no skipping file sync
    (S.TERMINATING, S.UP_TO_DATE),      # terminating is final
    (S.TERMINATING, S.UPDATE_FAILED),
    (S.UPDATE_FAILED, S.UP_TO_DATE),    # a failed node is updated again before it is up to date
    (S.DRAINING, S.SETTING_UP),
])
def test_forbidden_transitions(old, new):
    assert not can_transition(old, new)
    with pytest.raises(InvalidTransition):
        check_transition(old, new)


def test_any_live_state_can_fail_or_terminate():
    for s in S:
        if s is not S.TERMINATING:
            assert can_transition(s, S.UPDATE_FAILED) and can_transition(s, S.TERMINATING)


def test_updated_again_after_success_failure_or_interruption():
    assert can_transition(S.UP_TO_DATE, S.WAITING_FOR_SSH)
    assert can_transition(S.UPDATE_FAILED, S.WAITING_FOR_SSH)
    for interrupted in (S.WAITING_FOR_SSH, S.SYNCING_FILES, S.SETTING_UP):  # adopted after a crash
        assert can_transition(interrupted, S.WAITING_FOR_SSH)
