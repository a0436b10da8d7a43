"""The ISA-18.2 state machine alone: every transition, with who and when."""

from __future__ import annotations

import pytest

from ecoplat.alarms.state import (
    AlarmState,
    AlarmStatus,
    InvalidTransition,
    acknowledge,
    condition,
    expire_shelve,
    remove_from_service,
    return_to_service,
    shelve,
    suppress,
    unshelve,
    unsuppress,
)

S = AlarmState


def path(*steps):  # type: ignore[no-untyped-def]
    status = AlarmStatus()
    out = []
    for fn, args in steps:
        status, t = fn(status, *args)
        if t is not None:
            out.append((t.action, t.from_state, t.to_state, t.at, t.by))
    return status, out


def test_acknowledged_alarm_returns_to_normal_when_condition_clears() -> None:
    status, seq = path((condition, (True, 10)), (acknowledge, (20, 5)), (condition, (False, 30)))
    assert status.state == S.normal
    assert seq == [("alarm", S.normal, S.unacknowledged, 10, None),
                   ("acknowledge", S.unacknowledged, S.acknowledged, 20, 5),
                   ("return_to_normal", S.acknowledged, S.normal, 30, None)]


def test_alarm_cleared_before_ack_waits_in_rtn_unacknowledged_until_ack() -> None:
    status, seq = path((condition, (True, 10)), (condition, (False, 20)), (acknowledge, (30, 5)))
    assert [s[1:3] for s in seq] == [(S.normal, S.unacknowledged), (S.unacknowledged, S.rtn_unacknowledged),
                                     (S.rtn_unacknowledged, S.normal)]
    assert status.state == S.normal


def test_retrigger_in_rtn_unacknowledged_returns_to_unacknowledged() -> None:
    status, seq = path((condition, (True, 1)), (condition, (False, 2)), (condition, (True, 3)))
    assert status.state == S.unacknowledged
    assert seq[-1][:3] == ("alarm", S.rtn_unacknowledged, S.unacknowledged)


def test_ack_is_refused_when_nothing_to_acknowledge() -> None:
    with pytest.raises(InvalidTransition):
        acknowledge(AlarmStatus(), 1, 1)
    s, _ = condition(AlarmStatus(), True, 1)
    s, _ = acknowledge(s, 2, 1)
    with pytest.raises(InvalidTransition):
        acknowledge(s, 3, 1)


def test_shelved_alarm_tracks_condition_and_returns_to_its_state_at_expiry() -> None:
    s, _ = condition(AlarmStatus(), True, 0)
    s, t = shelve(s, 1000, 10, 7, "maintenance")
    assert s.state == S.shelved and t is not None and t.note == "maintenance" and t.by == 7
    s, t = condition(s, False, 20)
    assert t is None and s.state == S.shelved  # hidden from the operator
    s, t = condition(s, True, 30)
    assert t is None
    assert expire_shelve(s, 999) == (s, None)
    s, t = expire_shelve(s, 1000)
    assert t is not None and (t.action, t.to_state, t.by, t.at) == ("unshelve", S.unacknowledged, None, 1000)


def test_unshelve_of_cleared_alarm_goes_to_normal_and_of_acked_active_stays_acked() -> None:
    s, _ = condition(AlarmStatus(), True, 0)
    s, _ = acknowledge(s, 1, 1)
    s, _ = shelve(s, 100, 2, 1)
    s2, t = unshelve(s, 3, 1)
    assert s2.state == S.acknowledged
    s3, _ = condition(s, False, 4)
    s3, t = unshelve(s3, 5, 1)
    assert s3.state == S.normal


def test_shelve_needs_future_expiry_and_an_open_alarm() -> None:
    s, _ = condition(AlarmStatus(), True, 0)
    with pytest.raises(InvalidTransition):
        shelve(s, 5, 10, 1)
    with pytest.raises(InvalidTransition):
        shelve(AlarmStatus(), 50, 10, 1)


def test_suppressed_by_design_and_out_of_service() -> None:
    s, _ = condition(AlarmStatus(), True, 0)
    s, t = suppress(s, 1, None, "unit shut down")
    assert s.state == S.suppressed and t is not None and t.from_state == S.unacknowledged
    s, _ = condition(s, False, 2)
    s, t = unsuppress(s, 3, None)
    assert s.state == S.normal
    s, _ = condition(s, True, 4)
    s, t = remove_from_service(s, 5, 9, "sensor replaced")
    assert s.state == S.out_of_service
    with pytest.raises(InvalidTransition):
        suppress(s, 6, 9)
    s, t = return_to_service(s, 7, 9)
    assert s.state == S.unacknowledged


def test_status_round_trips_through_stored_state() -> None:
    for state in (S.normal, S.unacknowledged, S.acknowledged, S.rtn_unacknowledged):
        assert AlarmStatus.from_state(state).state == state
    st = AlarmStatus.from_state(S.shelved, active=True, acked=False, shelved_until=99)
    assert st.state == S.shelved and st.shelved_until == 99 and st.active
