"""The alarm life cycle of ISA-18.2 / IEC 62682 (clause 5, "alarm state transition diagram").

Pure functions, no I/O. An alarm's state follows from three facts: is its condition active, has
the operator acknowledged the latest annunciation, and is it in service, shelved, suppressed by
design or out of service. Every change returns a Transition (from, to, at, by, note) that the
service stores.

    A Normal ──condition──► B Unacknowledged ──ack──► C Acknowledged ──clears──► A Normal
                             │ clears before ack                    ▲
                             ▼                                      │ ack
                            D Return-to-normal unacknowledged ──────┘
                             └──condition again──► B (same alarm, count + 1)

Shelving (with an expiry), suppression by design and removal from service hide the alarm from
the operator; the condition keeps being tracked, and on return the alarm takes the state the
condition has then (active → Unacknowledged if it sounded while hidden, else what it was).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum


class AlarmState(StrEnum):
    normal = "normal"
    unacknowledged = "unacknowledged"
    acknowledged = "acknowledged"
    rtn_unacknowledged = "rtn_unacknowledged"
    shelved = "shelved"
    suppressed = "suppressed"
    out_of_service = "out_of_service"


class Mode(StrEnum):
    in_service = "in_service"
    shelved = "shelved"
    suppressed = "suppressed"
    out_of_service = "out_of_service"


_MODE_STATE = {Mode.shelved: AlarmState.shelved, Mode.suppressed: AlarmState.suppressed,
               Mode.out_of_service: AlarmState.out_of_service}

# States in which the operator still has to act (the banner counts these).
UNACKNOWLEDGED_STATES = frozenset({AlarmState.unacknowledged, AlarmState.rtn_unacknowledged})
# States in which an alarm is still open: a new excursion updates it instead of opening another.
OPEN_STATES = frozenset(set(AlarmState) - {AlarmState.normal})


class InvalidTransition(ValueError):
    """The action does not apply in the alarm's current state (the API answers 409)."""


@dataclass(frozen=True, slots=True)
class AlarmStatus:
    active: bool = False
    acked: bool = True
    mode: Mode = Mode.in_service
    shelved_until: int | None = None  # ms since the epoch

    @property
    def state(self) -> AlarmState:
        if self.mode != Mode.in_service:
            return _MODE_STATE[self.mode]
        if self.active:
            return AlarmState.acknowledged if self.acked else AlarmState.unacknowledged
        return AlarmState.normal if self.acked else AlarmState.rtn_unacknowledged

    @classmethod
    def from_state(cls, state: AlarmState | str, *, active: bool | None = None, acked: bool | None = None,
                   shelved_until: int | None = None) -> AlarmStatus:
        """Rebuilds the status from stored columns (state plus the condition and ack flags)."""
        state = AlarmState(state)
        if state == AlarmState.normal:
            return cls(active=False, acked=True)
        if state == AlarmState.unacknowledged:
            return cls(active=True, acked=False)
        if state == AlarmState.acknowledged:
            return cls(active=True, acked=True)
        if state == AlarmState.rtn_unacknowledged:
            return cls(active=False, acked=False)
        mode = {AlarmState.shelved: Mode.shelved, AlarmState.suppressed: Mode.suppressed,
                AlarmState.out_of_service: Mode.out_of_service}[state]
        return cls(active=bool(active), acked=True if acked is None else acked, mode=mode,
                   shelved_until=shelved_until if mode == Mode.shelved else None)


@dataclass(frozen=True, slots=True)
class Transition:
    action: str  # alarm, return_to_normal, acknowledge, shelve, unshelve, suppress, …
    from_state: AlarmState
    to_state: AlarmState
    at: int  # ms since the epoch
    by: int | None = None  # user id; None for the platform itself
    note: str = ""


Result = tuple[AlarmStatus, Transition | None]


def _step(action: str, old: AlarmStatus, new: AlarmStatus, at: int, by: int | None, note: str) -> Result:
    if old.state == new.state and action in ("alarm", "return_to_normal"):
        # The condition changed while the alarm is hidden: nothing for the operator, but the new
        # status is kept so un-shelving lands in the right state.
        return new, None
    return new, Transition(action, old.state, new.state, at, by, note)


def condition(status: AlarmStatus, active: bool, at: int) -> Result:
    """The engine says the alarm condition became active or cleared."""
    if active == status.active:
        return status, None
    if active:
        # A new annunciation always needs a new acknowledgement (ISA-18.2 D → B and A → B).
        new = replace(status, active=True, acked=False)
        return _step("alarm", status, new, at, None, "")
    return _step("return_to_normal", status, replace(status, active=False), at, None, "")


def acknowledge(status: AlarmStatus, at: int, by: int | None, note: str = "") -> Result:
    if status.mode != Mode.in_service or status.acked:
        raise InvalidTransition(f"An alarm in state '{status.state}' cannot be acknowledged; only "
                                "unacknowledged alarms can.")
    return _step("acknowledge", status, replace(status, acked=True), at, by, note)


def shelve(status: AlarmStatus, until: int, at: int, by: int | None, note: str = "") -> Result:
    if until <= at:
        raise InvalidTransition("The shelving expiry must be in the future.")
    if status.mode not in (Mode.in_service, Mode.shelved):
        raise InvalidTransition(f"An alarm in state '{status.state}' cannot be shelved.")
    if status.mode == Mode.in_service and status.state == AlarmState.normal:
        raise InvalidTransition("A normal alarm has nothing to shelve.")
    return _step("shelve", status, replace(status, mode=Mode.shelved, shelved_until=until), at, by, note)


def unshelve(status: AlarmStatus, at: int, by: int | None, note: str = "") -> Result:
    """Manual un-shelve, or expiry (by=None). Returns to the state the condition has then."""
    if status.mode != Mode.shelved:
        raise InvalidTransition(f"An alarm in state '{status.state}' is not shelved.")
    return _step("unshelve", status, _back_in_service(status), at, by, note)


def expire_shelve(status: AlarmStatus, now: int) -> Result:
    if status.mode == Mode.shelved and status.shelved_until is not None and now >= status.shelved_until:
        return unshelve(status, now, None, "shelving expired")
    return status, None


def _back_in_service(status: AlarmStatus) -> AlarmStatus:
    # A cleared condition returns to Normal: the operator saw it before hiding it, and nothing
    # is left to act on. An active one keeps its acknowledgement unless it sounded again.
    if not status.active:
        return AlarmStatus(active=False, acked=True)
    return AlarmStatus(active=True, acked=status.acked)


def suppress(status: AlarmStatus, at: int, by: int | None, note: str = "") -> Result:
    """Suppression by design (the plant state makes the alarm meaningless, e.g. unit shut down)."""
    if status.mode == Mode.suppressed:
        raise InvalidTransition("The alarm is already suppressed.")
    if status.mode == Mode.out_of_service:
        raise InvalidTransition("An alarm out of service cannot be suppressed.")
    return _step("suppress", status, replace(status, mode=Mode.suppressed, shelved_until=None), at, by, note)


def unsuppress(status: AlarmStatus, at: int, by: int | None, note: str = "") -> Result:
    if status.mode != Mode.suppressed:
        raise InvalidTransition(f"An alarm in state '{status.state}' is not suppressed.")
    return _step("unsuppress", status, _back_in_service(status), at, by, note)


def remove_from_service(status: AlarmStatus, at: int, by: int | None, note: str = "") -> Result:
    if status.mode == Mode.out_of_service:
        raise InvalidTransition("The alarm is already out of service.")
    return _step("remove_from_service", status,
                 replace(status, mode=Mode.out_of_service, shelved_until=None), at, by, note)


def return_to_service(status: AlarmStatus, at: int, by: int | None, note: str = "") -> Result:
    if status.mode != Mode.out_of_service:
        raise InvalidTransition(f"An alarm in state '{status.state}' is in service.")
    return _step("return_to_service", status, _back_in_service(status), at, by, note)
