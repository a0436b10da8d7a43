"""Alarm rules, alarms and their life cycle, notification channels, KPIs.

Keyword-only functions taking the session and the acting principal; every read and write is
scoped by tenant here (another enterprise's id answers 404). They flush, never commit. Alarm
events for the bus are collected on the session and published only after it commits
(``publish_after_commit``), so no page ever shows a change that was rolled back."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import partial
from typing import Any

import orjson
from sqlalchemy import and_, bindparam, event, func, insert, or_, select, text, update
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.orm import Session

from ecoplat.alarms import kpis as kpi_math
from ecoplat.alarms import state as sm
from ecoplat.alarms.engine import ConditionChange, RuleError, RuleSpec, compile_rule
from ecoplat.alarms.models import (
    Alarm,
    AlarmComment,
    AlarmRule,
    AlarmTransition,
    InAppNotification,
    NotificationChannel,
    OutboxMessage,
)
from ecoplat.alarms.schemas import (
    SECRET_CONFIG_KEYS,
    AlarmOut,
    AlarmRuleIn,
    AlarmRulePatch,
    ChannelIn,
    ChannelPatch,
    ShelveIn,
)
from ecoplat.db import UTCDateTime, utcnow
from ecoplat.errors import Conflict, NotFound, Unprocessable
from ecoplat.pagination import PageParams, paginate
from ecoplat.tenancy import audit
from ecoplat.tenancy.auth import Principal

PENDING_EVENTS = "ecoplat.alarm_events"
OUTBOX_ROWS = "ecoplat.alarm_outbox_rows"
RULE_EVENTS = "ecoplat.alarm_rule_events"


# ---------------------------------------------------------------------------------------------
# time helpers


def to_ms(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


# ---------------------------------------------------------------------------------------------
# events after commit


def publish_after_commit(db: Session, publish: Callable[[str, dict[str, Any]], None]) -> None:
    """Publishes the alarm and rule events this session collected once it commits."""

    def _after_commit(session: Session) -> None:
        for topic, data in built_events(take_pending_events(session)):
            publish(topic, data)

    def _after_rollback(session: Session, _previous: Any) -> None:
        session.info.pop(PENDING_EVENTS, None)

    if not db.info.get("ecoplat.alarm_hook"):
        db.info["ecoplat.alarm_hook"] = True
        event.listen(db, "after_commit", _after_commit)
        event.listen(db, "after_soft_rollback", _after_rollback)


PendingEvent = tuple[str, dict[str, Any] | Callable[[], dict[str, Any]]]


def take_pending_events(db: Session) -> list[PendingEvent]:
    """The events this session has collected, taken from it: for a caller that commits the
    session itself and publishes them after (the alarm writer), instead of publish_after_commit."""
    return db.info.pop(PENDING_EVENTS, [])  # type: ignore[no-any-return]


def built_events(pending: Sequence[PendingEvent]) -> list[tuple[str, dict[str, Any]]]:
    """(topic, data) of taken events, their data built now (after the commit)."""
    return [(topic, data() if callable(data) else data) for topic, data in pending]


def _queue_event(db: Session, topic: str, data: dict[str, Any] | Callable[[], dict[str, Any]]) -> None:
    """Queues an event for after the commit; given a function, it builds the data then."""
    db.info.setdefault(PENDING_EVENTS, []).append((topic, data))


def _count_outbox(db: Session, rows: int) -> None:
    if rows:
        db.info[OUTBOX_ROWS] = db.info.get(OUTBOX_ROWS, 0) + rows


def outbox_rows_written(db: Session) -> int:
    """Notifications this session has queued in the outbox (the dispatcher need only wake for
    them)."""
    return int(db.info.get(OUTBOX_ROWS, 0))


def alarm_event(alarm: Alarm, transition: str) -> dict[str, Any]:
    data = AlarmOut.model_validate(alarm).model_dump(mode="json")
    data["transition"] = transition
    return data


# ---------------------------------------------------------------------------------------------
# rules


def _spec(rule: AlarmRule) -> RuleSpec:
    return RuleSpec(id=rule.id or 0, enterprise_id=rule.enterprise_id, kind=rule.kind, key=rule.key,
                    params=dict(rule.params or {}), priority=rule.priority, deadband=rule.deadband,
                    on_delay_s=rule.on_delay_s, off_delay_s=rule.off_delay_s,
                    message_template=rule.message_template, device_id=rule.device_id,
                    profile_id=rule.profile_id, name=rule.name, enabled=rule.enabled)


def rule_spec(rule: AlarmRule) -> RuleSpec:
    return _spec(rule)


def _validate(rule: AlarmRule) -> None:
    try:
        compile_rule(_spec(rule))
    except RuleError as e:
        raise Unprocessable(f"{e.field}: {e}", errors=[{"field": e.field, "message": str(e),
                                                          "type": "rule_error"}]) from e


def _check_target(db: Session, actor: Principal, enterprise_id: int, device_id: int | None,
                  profile_id: int | None) -> None:
    from ecoplat.connect.models import DeviceProfile
    from ecoplat.connect.service import get_device

    if device_id is not None:
        device = get_device(db, actor=actor, device_id=device_id)
        if device.enterprise_id != enterprise_id:
            raise NotFound("device", device_id)
    if profile_id is not None:
        profile = db.get(DeviceProfile, profile_id)
        if profile is None or profile.enterprise_id != enterprise_id:
            raise NotFound("device profile", profile_id)


def _rule_changed(db: Session, rule: AlarmRule) -> None:
    _queue_event(db, f"alarm_rule.{rule.enterprise_id}", {"rule_id": rule.id})


def create_rule(db: Session, *, actor: Principal, data: AlarmRuleIn, ip: str = "") -> AlarmRule:
    actor.require("alarms:configure")
    enterprise_id = actor.enterprise_id
    _check_target(db, actor, enterprise_id, data.device_id, data.profile_id)
    rule = AlarmRule(enterprise_id=enterprise_id, **data.model_dump())
    rule.kind = data.kind.value
    _validate(rule)
    db.add(rule)
    db.flush()
    audit.record(db, actor=actor, action="create", entity_type="alarm_rule", entity_id=rule.id,
                 after=rule, enterprise_id=enterprise_id, ip=ip)
    _rule_changed(db, rule)
    return rule


def get_rule(db: Session, *, actor: Principal, rule_id: int) -> AlarmRule:
    rule = db.get(AlarmRule, rule_id)
    if rule is None or not actor.sees_enterprise(rule.enterprise_id):
        raise NotFound("alarm rule", rule_id)
    return rule


def list_rules(db: Session, *, actor: Principal, page: PageParams, device_id: int | None = None,
               profile_id: int | None = None, kind: str | None = None) -> tuple[list[AlarmRule], str | None]:
    stmt = select(AlarmRule)
    if not actor.is_platform_admin:
        stmt = stmt.where(AlarmRule.enterprise_id == actor.enterprise_id)
    if device_id is not None:
        stmt = stmt.where(AlarmRule.device_id == device_id)
    if profile_id is not None:
        stmt = stmt.where(AlarmRule.profile_id == profile_id)
    if kind is not None:
        stmt = stmt.where(AlarmRule.kind == kind)
    return paginate(db, stmt, page, key=(AlarmRule.id,))


def update_rule(db: Session, *, actor: Principal, rule_id: int, data: AlarmRulePatch, ip: str = "") -> AlarmRule:
    actor.require("alarms:configure")
    rule = get_rule(db, actor=actor, rule_id=rule_id)
    before = audit.snapshot(rule)
    was_enabled = rule.enabled
    for k, v in data.model_dump(exclude_unset=True).items():
        if v is None and k not in ("params",):
            continue
        setattr(rule, k, v if v is not None else {})
    _validate(rule)
    if was_enabled != rule.enabled:
        # Disabling a rule takes its open alarms out of service (ISA-18.2 §5: an alarm removed
        # from service stays on the record); enabling it returns them.
        step = sm.remove_from_service if not rule.enabled else sm.return_to_service
        note = "rule disabled" if not rule.enabled else "rule enabled"
        now = to_ms(utcnow())
        for alarm in db.scalars(select(Alarm).where(Alarm.rule_id == rule.id, Alarm.closed_at.is_(None))):
            try:
                new, t = step(status_of(alarm), now, actor.user_id, note)
            except sm.InvalidTransition:
                continue
            _apply(db, alarm, new, t)
    db.flush()
    audit.record(db, actor=actor, action="update", entity_type="alarm_rule", entity_id=rule.id,
                 before=before, after=rule, enterprise_id=rule.enterprise_id, ip=ip)
    _rule_changed(db, rule)
    return rule


def delete_rule(db: Session, *, actor: Principal, rule_id: int, ip: str = "") -> None:
    actor.require("alarms:configure")
    rule = get_rule(db, actor=actor, rule_id=rule_id)
    before = audit.snapshot(rule)
    ent = rule.enterprise_id
    # Its open alarms can never clear once the rule is gone: close them, on the record.
    now = utcnow()
    for alarm in db.scalars(select(Alarm).where(Alarm.rule_id == rule.id, Alarm.closed_at.is_(None))):
        t = sm.Transition("rule_deleted", sm.AlarmState(alarm.state), sm.AlarmState.normal, to_ms(now),
                          actor.user_id, "the alarm rule was deleted")
        _apply(db, alarm, sm.AlarmStatus(), t)
    db.delete(rule)
    db.flush()
    audit.record(db, actor=actor, action="delete", entity_type="alarm_rule", entity_id=rule_id,
                 before=before, enterprise_id=ent, ip=ip)
    _queue_event(db, f"alarm_rule.{ent}", {"rule_id": rule_id, "deleted": True})


_TEMPLATE_FIELDS = ("name", "kind", "key", "params", "priority", "deadband", "on_delay_s", "off_delay_s",
                    "message_template", "enabled")


def _rules_from_templates(db: Session, profile: Any) -> list[AlarmRule]:
    """AlarmRule rows for a profile's rule templates (DeviceProfile.default_rules) that it does not
    have yet (matched by name); templates that do not compile are skipped."""
    have = set(db.scalars(select(AlarmRule.name).where(AlarmRule.profile_id == profile.id)))
    out = []
    for template in profile.default_rules or []:
        if not isinstance(template, dict) or template.get("name", "") in have:
            continue
        values: dict[str, Any] = {"name": "", "key": "", "params": {}, "priority": 3, "deadband": 0.0,
                                  "on_delay_s": 0.0, "off_delay_s": 0.0, "message_template": "", "enabled": True}
        values.update({k: template[k] for k in _TEMPLATE_FIELDS if k in template})
        rule = AlarmRule(enterprise_id=profile.enterprise_id, profile_id=profile.id, device_id=None, **values)
        try:
            compile_rule(_spec(rule))
        except (RuleError, TypeError, ValueError):
            continue
        db.add(rule)
        out.append(rule)
    db.flush()
    return out


def instantiate_profile_rules(db: Session, *, actor: Principal, profile_id: int, ip: str = "") -> list[AlarmRule]:
    """Creates the alarm rules of a device profile's rule templates (e.g. from the knowledge
    graph's operating limits), once per template name."""
    from ecoplat.connect.models import DeviceProfile

    actor.require("alarms:configure")
    profile = db.get(DeviceProfile, profile_id)
    if profile is None or not actor.sees_enterprise(profile.enterprise_id or 0):
        raise NotFound("device profile", profile_id)
    rules = _rules_from_templates(db, profile)
    for rule in rules:
        audit.record(db, actor=actor, action="create", entity_type="alarm_rule", entity_id=rule.id, after=rule,
                     enterprise_id=rule.enterprise_id, ip=ip)
        _rule_changed(db, rule)
    return rules


def instantiate_missing_profile_rules(db: Session) -> int:
    """At start-up: profiles with rule templates and no alarm rule at all get theirs, so a plant
    set up from profiles (or the demo) has working alarms without another step."""
    from ecoplat.connect.models import DeviceProfile

    with_rules = select(AlarmRule.profile_id).where(AlarmRule.profile_id.is_not(None)).distinct()
    created = 0
    for profile in db.scalars(select(DeviceProfile).where(DeviceProfile.id.not_in(with_rules))):
        if profile.default_rules and profile.enterprise_id is not None:
            created += len(_rules_from_templates(db, profile))
    return created


def load_enabled_rules(db: Session) -> list[RuleSpec]:
    """Every enabled rule of every enterprise (the runtime's start-up load)."""
    return [_spec(r) for r in db.scalars(select(AlarmRule).where(AlarmRule.enabled.is_(True)))]


# ---------------------------------------------------------------------------------------------
# alarms: reading


@dataclass(frozen=True, slots=True)
class AlarmFilter:
    site_id: int | None = None
    device_id: int | None = None
    priorities: tuple[int, ...] = ()
    states: tuple[str, ...] = ()
    start: datetime | None = None
    end: datetime | None = None
    open_only: bool = False


def _scoped_alarms(actor: Principal) -> Any:
    stmt = select(Alarm)
    if not actor.is_platform_admin:
        stmt = stmt.where(Alarm.enterprise_id == actor.enterprise_id)
    return stmt


def list_alarms(db: Session, *, actor: Principal, page: PageParams,
                filters: AlarmFilter = AlarmFilter()) -> tuple[list[Alarm], str | None]:
    """Newest first (keyset on id descending)."""
    actor.require("alarms:read")
    stmt = _scoped_alarms(actor)
    if filters.site_id is not None:
        stmt = stmt.where(Alarm.site_id == filters.site_id)
    if filters.device_id is not None:
        stmt = stmt.where(Alarm.device_id == filters.device_id)
    if filters.priorities:
        stmt = stmt.where(Alarm.priority.in_(filters.priorities))
    if filters.states:
        stmt = stmt.where(Alarm.state.in_(filters.states))
    if filters.start is not None:
        stmt = stmt.where(Alarm.last_triggered_at >= filters.start)
    if filters.end is not None:
        stmt = stmt.where(Alarm.first_triggered_at < filters.end)
    if filters.open_only:
        stmt = stmt.where(Alarm.closed_at.is_(None))
    return paginate(db, stmt, page, key=(Alarm.id,), descending=True)


def get_alarm(db: Session, *, actor: Principal, alarm_id: int, for_update: bool = False) -> Alarm:
    actor.require("alarms:read")
    stmt = select(Alarm).where(Alarm.id == alarm_id)
    if for_update:
        stmt = stmt.with_for_update()
    alarm = db.scalar(stmt)
    if alarm is None or not actor.sees_enterprise(alarm.enterprise_id):
        raise NotFound("alarm", alarm_id)
    return alarm


def list_transitions(db: Session, *, actor: Principal, alarm_id: int) -> list[AlarmTransition]:
    alarm = get_alarm(db, actor=actor, alarm_id=alarm_id)
    return list(db.scalars(select(AlarmTransition).where(AlarmTransition.alarm_id == alarm.id)
                           .order_by(AlarmTransition.id)))


def list_comments(db: Session, *, actor: Principal, alarm_id: int) -> list[AlarmComment]:
    alarm = get_alarm(db, actor=actor, alarm_id=alarm_id)
    return list(db.scalars(select(AlarmComment).where(AlarmComment.alarm_id == alarm.id)
                           .order_by(AlarmComment.id)))


def count_unacknowledged(db: Session, *, actor: Principal) -> int:
    stmt = select(func.count()).select_from(Alarm).where(
        Alarm.state.in_([s.value for s in sm.UNACKNOWLEDGED_STATES]))
    if not actor.is_platform_admin:
        stmt = stmt.where(Alarm.enterprise_id == actor.enterprise_id)
    return int(db.scalar(stmt) or 0)


# ---------------------------------------------------------------------------------------------
# alarms: the life cycle


def status_of(alarm: Alarm) -> sm.AlarmStatus:
    until = to_ms(alarm.shelved_until) if alarm.shelved_until is not None else None
    mode = {"shelved": sm.Mode.shelved, "suppressed": sm.Mode.suppressed,
            "out_of_service": sm.Mode.out_of_service}.get(alarm.state, sm.Mode.in_service)
    return sm.AlarmStatus(active=alarm.active, acked=alarm.acked, mode=mode, shelved_until=until)


def _apply(db: Session, alarm: Alarm, new: sm.AlarmStatus, t: sm.Transition | None,
           value: Any = None, channels: Sequence[NotificationChannel] | None = None) -> None:
    _set_status(alarm, new, t)
    if t is None:
        return
    if channels is None:
        channels = enabled_channels(db, [alarm.enterprise_id]).get(alarm.enterprise_id, [])
    _record(db, alarm, t, alarm_event(alarm, t.action), value, channels)


def _set_status(alarm: Alarm, new: sm.AlarmStatus, t: sm.Transition | None) -> None:
    alarm.active = new.active
    alarm.acked = new.acked
    alarm.state = new.state.value
    alarm.shelved_until = from_ms(new.shelved_until) if new.shelved_until is not None else None
    if new.mode != sm.Mode.shelved:
        alarm.shelved_by = None
    if t is not None and new.state == sm.AlarmState.normal:
        alarm.closed_at = from_ms(t.at)


def _record(db: Session, alarm: Alarm, t: sm.Transition, data: dict[str, Any], value: Any,
            channels: Sequence[NotificationChannel]) -> None:
    """The transition row, the alarm event (published after commit) and the outbox rows."""
    db.add(AlarmTransition(alarm_id=alarm.id, enterprise_id=alarm.enterprise_id, action=t.action,
                           from_state=t.from_state.value, to_state=t.to_state.value, at=from_ms(t.at),
                           user_id=t.by, note=t.note[:1000], value=_json_value(value)))
    _queue_event(db, f"alarm.{alarm.enterprise_id}", data)
    for ch in channels:
        if t.action in (ch.actions or []) and alarm.priority <= ch.max_priority:
            db.add(OutboxMessage(enterprise_id=alarm.enterprise_id, channel_id=ch.id, alarm_id=alarm.id,
                                 event=data, next_attempt_at=utcnow()))
            _count_outbox(db, 1)


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    return str(value)


@dataclass(frozen=True, slots=True)
class ChannelRef:
    """What routing an alarm to a channel needs (the outbox row carries the channel id)."""

    id: int
    enterprise_id: int
    actions: tuple[str, ...]
    max_priority: int


ChannelSource = Callable[[Session, set[int]], Mapping[int, Sequence[Any]]]


class ChannelCache:
    """The enabled channels per enterprise, for the alarm writer: read once, dropped when a
    channel of that enterprise changes (event notification_channel.<enterprise>)."""

    def __init__(self) -> None:
        self._by_ent: dict[int, tuple[ChannelRef, ...]] = {}
        self._generation = 0
        self._lock = threading.Lock()

    def __call__(self, db: Session, enterprise_ids: set[int]) -> dict[int, tuple[ChannelRef, ...]]:
        with self._lock:
            cached = {e: self._by_ent[e] for e in enterprise_ids if e in self._by_ent}
            generation = self._generation
        missing = enterprise_ids - cached.keys()
        if missing:
            loaded = db.execute(select(NotificationChannel.id, NotificationChannel.enterprise_id,
                                       NotificationChannel.actions, NotificationChannel.max_priority)
                                .where(NotificationChannel.enterprise_id.in_(missing),
                                       NotificationChannel.enabled.is_(True))
                                .order_by(NotificationChannel.id)).all()
            fresh: dict[int, list[ChannelRef]] = {e: [] for e in missing}
            for cid, ent, actions, max_priority in loaded:
                fresh[ent].append(ChannelRef(cid, ent, tuple(actions or ()), max_priority))
            with self._lock:
                for ent, refs in fresh.items():
                    cached[ent] = tuple(refs)
                    if generation == self._generation:  # nothing changed while reading
                        self._by_ent[ent] = cached[ent]
        return cached

    def forget(self, enterprise_id: int | None = None) -> None:
        with self._lock:
            self._generation += 1
            if enterprise_id is None:
                self._by_ent.clear()
            else:
                self._by_ent.pop(enterprise_id, None)


def enabled_channels(db: Session, enterprise_ids: Iterable[int]) -> dict[int, list[NotificationChannel]]:
    out: dict[int, list[NotificationChannel]] = {}
    ids = list(set(enterprise_ids))
    if not ids:
        return out
    for ch in db.scalars(select(NotificationChannel).where(NotificationChannel.enterprise_id.in_(ids),
                                                           NotificationChannel.enabled.is_(True))):
        out.setdefault(ch.enterprise_id, []).append(ch)
    return out


def _act(db: Session, actor: Principal, alarm_id: int, permission: str,
         step: Callable[[sm.AlarmStatus, int], sm.Result], note: str, ip: str) -> Alarm:
    actor.require(permission)
    alarm = get_alarm(db, actor=actor, alarm_id=alarm_id, for_update=True)
    before = {"state": alarm.state}
    try:
        new, t = step(status_of(alarm), to_ms(utcnow()))
    except sm.InvalidTransition as e:
        raise Conflict(str(e)) from e
    _apply(db, alarm, new, t)
    if t is not None and t.action == "acknowledge":
        alarm.acked_by, alarm.acked_at = actor.user_id, from_ms(t.at)
    db.flush()
    audit.record(db, actor=actor, action=t.action if t else "noop", entity_type="alarm",
                 entity_id=alarm.id, before=before, after={"state": alarm.state, "note": note},
                 enterprise_id=alarm.enterprise_id, ip=ip)
    return alarm


def acknowledge(db: Session, *, actor: Principal, alarm_id: int, note: str = "", ip: str = "") -> Alarm:
    return _act(db, actor, alarm_id, "alarms:ack",
                lambda s, now: sm.acknowledge(s, now, actor.user_id, note), note, ip)


def shelve(db: Session, *, actor: Principal, alarm_id: int, data: ShelveIn, ip: str = "") -> Alarm:
    now = utcnow()
    until = data.until if data.until is not None else now + timedelta(minutes=data.minutes or 0)
    if until.tzinfo is None:
        until = until.replace(tzinfo=UTC)
    if until <= now:
        raise Unprocessable("until: the shelving expiry must be in the future.",
                            errors=[{"field": "until", "message": "must be in the future", "type": "value_error"}])
    if until - now > timedelta(days=30):
        raise Unprocessable("until: alarms can be shelved for at most 30 days.",
                            errors=[{"field": "until", "message": "at most 30 days", "type": "value_error"}])
    alarm = _act(db, actor, alarm_id, "alarms:shelve",
                 lambda s, t: sm.shelve(s, to_ms(until), t, actor.user_id, data.reason), data.reason, ip)
    alarm.shelved_by, alarm.shelve_reason = actor.user_id, data.reason
    db.flush()
    return alarm


def unshelve(db: Session, *, actor: Principal, alarm_id: int, note: str = "", ip: str = "") -> Alarm:
    alarm = _act(db, actor, alarm_id, "alarms:shelve",
                 lambda s, now: sm.unshelve(s, now, actor.user_id, note), note, ip)
    alarm.shelve_reason = ""
    return alarm


def suppress(db: Session, *, actor: Principal, alarm_id: int, note: str = "", ip: str = "") -> Alarm:
    return _act(db, actor, alarm_id, "alarms:shelve",
                lambda s, now: sm.suppress(s, now, actor.user_id, note), note, ip)


def unsuppress(db: Session, *, actor: Principal, alarm_id: int, note: str = "", ip: str = "") -> Alarm:
    return _act(db, actor, alarm_id, "alarms:shelve",
                lambda s, now: sm.unsuppress(s, now, actor.user_id, note), note, ip)


def remove_from_service(db: Session, *, actor: Principal, alarm_id: int, note: str = "", ip: str = "") -> Alarm:
    return _act(db, actor, alarm_id, "alarms:shelve",
                lambda s, now: sm.remove_from_service(s, now, actor.user_id, note), note, ip)


def return_to_service(db: Session, *, actor: Principal, alarm_id: int, note: str = "", ip: str = "") -> Alarm:
    return _act(db, actor, alarm_id, "alarms:shelve",
                lambda s, now: sm.return_to_service(s, now, actor.user_id, note), note, ip)


def add_comment(db: Session, *, actor: Principal, alarm_id: int, text: str, ip: str = "") -> AlarmComment:
    actor.require("alarms:ack")
    alarm = get_alarm(db, actor=actor, alarm_id=alarm_id)
    comment = AlarmComment(alarm_id=alarm.id, enterprise_id=alarm.enterprise_id, user_id=actor.user_id,
                           text=text, at=utcnow())
    db.add(comment)
    db.flush()
    audit.record(db, actor=actor, action="comment", entity_type="alarm", entity_id=alarm.id,
                 after={"comment_id": comment.id, "text": text[:500]}, enterprise_id=alarm.enterprise_id, ip=ip)
    return comment


# ---------------------------------------------------------------------------------------------
# the platform's side: condition changes from the engine, shelve expiry


_EVENT_FIELDS = tuple(AlarmOut.model_fields)
# What a condition change may change on an open alarm (written by one UPDATE per alarm).
_MUTABLE = ("state", "active", "acked", "shelved_until", "shelved_by", "closed_at", "count", "last_triggered_at",
            "value", "message", "priority", "cleared_at", "updated_at")
_ALARM_COLUMNS = tuple(c.key for c in Alarm.__table__.columns)
# Rows per multi-row INSERT: SQLite binds at most 32,766 parameters in one statement.
_INSERT_CHUNK = 500


def _iso(value: datetime | None) -> str | None:
    """A datetime as AlarmOut's JSON has it (pydantic: ISO 8601, "Z" for UTC)."""
    if value is None:
        return None
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _event_converters() -> tuple[tuple[str, Callable[[Any], Any] | None], ...]:
    """AlarmOut's fields, each with how its value becomes JSON (None: as it is); a field of
    another type fails here, at import, rather than go out unconverted."""
    plain = (int, str, bool, int | None, str | None, Any)
    out = []
    for name, field in AlarmOut.model_fields.items():
        ann = field.annotation
        if ann in (datetime, datetime | None):
            out.append((name, _iso))
        elif ann in (float, float | None):
            out.append((name, _float))
        elif isinstance(ann, type) and issubclass(ann, StrEnum):
            out.append((name, str))
        elif ann in plain:
            out.append((name, None))
        else:
            raise TypeError(f"AlarmOut.{name}: no JSON conversion for {ann!r} in alarm events")
    return tuple(out)


_EVENT_CONVERTERS = _event_converters()


def _event_data(snapshot: dict[str, Any], action: str) -> dict[str, Any]:
    """The alarm event's data: what AlarmOut.model_validate(snapshot).model_dump(mode="json")
    gives, built from the writer's own rows without validating them again (a tenth of the
    write's CPU per alarm change in `ecoplat bench alarms`; tests/alarms/test_writer.py checks
    the two agree)."""
    data = {name: snapshot[name] if convert is None else convert(snapshot[name])
            for name, convert in _EVENT_CONVERTERS}
    data["transition"] = action
    return data


@dataclass
class _Plan:
    """The rows and events a batch of condition changes makes, computed from the open alarms as
    read (`seen`: id → updated_at, and on SQLite the largest alarm id the new ids follow)."""

    seen: dict[int, datetime]
    max_id: int | None
    touched: list[AlarmRow]
    new_rows: list[dict[str, Any]]
    updates: list[dict[str, Any]]
    transitions: list[dict[str, Any]]
    outbox: list[dict[str, Any]]
    events: list[tuple[str, dict[str, Any] | Callable[[], dict[str, Any]]]]


class AlarmRow:
    """An alarm as the writer plans with it: its columns as plain attributes. The batch's open
    alarms are read, changed and written by Core statements; as ORM objects, loading, changing
    and expunging them was over half of the write's CPU (`ecoplat bench alarms`)."""

    __slots__ = _ALARM_COLUMNS

    def __init__(self, **values: Any) -> None:
        for k, v in values.items():
            setattr(self, k, v)

    def __repr__(self) -> str:
        return f"AlarmRow(id={self.id}, state={self.state!r})"  # type: ignore[attr-defined]


_alarms = Alarm.__table__.c
# Built once (expanding IN lists): each statement is compiled once and found in SQLAlchemy's
# cache afterwards. The open alarms of a batch's rules and devices:
_PLANNED = and_(_alarms.rule_id.in_(bindparam("rules", expanding=True)),
                _alarms.device_id.in_(bindparam("devices", expanding=True)), _alarms.closed_at.is_(None))
_OPEN_ALARMS = select(*(_alarms[k] for k in _ALARM_COLUMNS)).where(_PLANNED).with_for_update()
# Under the lock, the open alarms planned from (PostgreSQL, which reserves ids from its
# sequence) and, on SQLite, any alarm opened since (id > the largest id when planning).
_OPEN_ALARM_STAMPS = select(_alarms.id, _alarms.updated_at).where(_PLANNED)
_OPEN_ALARM_STAMPS_SINCE = select(_alarms.id, _alarms.updated_at).where(or_(_PLANNED, _alarms.id > bindparam("after")))


def _pair_params(pairs: set[tuple[int, int]]) -> dict[str, list[int]]:
    return {"rules": sorted({r for r, _ in pairs}), "devices": sorted({d for _, d in pairs})}


def driver_connection(db: Session) -> Any:
    """The DBAPI connection under the session's (sqlite3's on SQLite), in its transaction."""
    return db.connection().connection.driver_connection


def _is_postgres(db: Session) -> bool:
    return db.get_bind().dialect.name == "postgresql"


def _sqlite_datetime_value(text: str | None) -> datetime | None:
    """A UTCDateTime as read from SQLite (see sqlite_datetime), as SQLAlchemy would give it."""
    return None if text is None else datetime.fromisoformat(text).replace(tzinfo=UTC)


def _read_converters() -> tuple[Callable[[Any], Any] | None, ...]:
    """Per alarms column, what turns SQLite's value into SQLAlchemy's (None: it is the same):
    SQLAlchemy's own result processors, but _sqlite_datetime_value for datetimes (a regular
    expression and two conversions each in SQLAlchemy's)."""
    dialect = sqlite_dialect.dialect()
    return tuple(_sqlite_datetime_value if isinstance(c.type, UTCDateTime)
                 else c.type.dialect_impl(dialect).result_processor(dialect, None)
                 for c in Alarm.__table__.columns)


_READ_CONVERTERS = _read_converters()
_COLUMN_LIST = ", ".join(f'"{c}"' for c in _ALARM_COLUMNS)
_OPEN_ALARMS_SQLITE = (
    f"SELECT {_COLUMN_LIST} "
    "FROM alarms WHERE rule_id IN (SELECT value FROM json_each(?)) "
    "AND device_id IN (SELECT value FROM json_each(?)) AND closed_at IS NULL")


def _open_alarms_sqlite(conn: Any, pairs: set[tuple[int, int]]) -> list[AlarmRow]:
    """The open alarms of the batch's rules and devices, read on the driver's connection: as
    rows through SQLAlchemy they were a fifth of the alarm write's CPU."""
    params = _pair_params(pairs)
    rows = conn.execute(_OPEN_ALARMS_SQLITE, (orjson.dumps(params["rules"]), orjson.dumps(params["devices"])))
    out = []
    for row in rows:
        alarm = AlarmRow()
        for name, convert, v in zip(_ALARM_COLUMNS, _READ_CONVERTERS, row, strict=True):
            setattr(alarm, name, v if convert is None else convert(v))
        out.append(alarm)
    return out


def _plan(db: Session, changes: Sequence[ConditionChange], channels: Mapping[int, Sequence[Any]],
          existing_rules: set[int], conn: Any = None) -> _Plan:
    """Runs the changes through the ISA-18.2 state machine; writes nothing. The alarms it reads
    are plain rows (AlarmRow), never in the session: the plan's rows are written by Core
    statements. `conn`: on SQLite, the session's driver connection (driver_connection)."""
    pairs = {(c.rule_id, c.device_id) for c in changes}
    open_alarms: dict[tuple[int, int], AlarmRow] = {}
    seen: dict[int, datetime] = {}
    db.flush()  # what this session changed by the ORM is what the plan starts from
    postgres = _is_postgres(db)
    if conn is None and not postgres:
        conn = driver_connection(db)
    found = (_open_alarms_sqlite(conn, pairs) if conn is not None
             else [AlarmRow(**row._mapping) for row in db.execute(_OPEN_ALARMS, _pair_params(pairs))])
    for alarm in found:
        seen[alarm.id] = alarm.updated_at  # type: ignore[attr-defined]
        if (alarm.rule_id, alarm.device_id) in pairs:  # type: ignore[attr-defined]
            open_alarms[(alarm.rule_id or 0, alarm.device_id)] = alarm  # type: ignore[attr-defined]
    max_id = None if conn is None else conn.execute("SELECT max(id) FROM alarms").fetchone()[0] or 0
    next_id = (max_id or 0) + 1
    pool: list[int] = []
    opening = sum(1 for c in changes if c.active and (c.rule_id, c.device_id) not in open_alarms)

    def new_id() -> int:
        # Ids known before the INSERT: one multi-row INSERT then needs no RETURNING (SQLite does
        # not promise RETURNING rows in VALUES order, so the ORM would insert row by row).
        nonlocal next_id
        if postgres:
            if not pool:
                pool.extend(db.scalars(
                    text("SELECT nextval(pg_get_serial_sequence('alarms', 'id')) FROM generate_series(1, :n)"),
                    {"n": max(1, opening)}))
            return pool.pop()
        next_id += 1
        return next_id - 1

    touched: list[AlarmRow] = []
    new_alarms: list[AlarmRow] = []
    # Each transition keeps the alarm as it was then (raised and cleared in one batch: both).
    records: list[tuple[AlarmRow, sm.Transition, dict[str, Any], Any, Sequence[NotificationChannel]]] = []

    def step(alarm: AlarmRow, new: sm.AlarmStatus, t: sm.Transition | None, value: Any,
             chans: Sequence[Any]) -> None:
        _set_status(alarm, new, t)
        if t is not None:
            records.append((alarm, t, {f: getattr(alarm, f) for f in _EVENT_FIELDS}, value, chans))

    now = utcnow()
    for c in changes:
        if c.rule_id not in existing_rules:
            continue  # the rule was deleted while its points were in flight
        key = (c.rule_id, c.device_id)
        alarm = open_alarms.get(key)
        at = from_ms(c.at)
        if c.suppression is not None:
            # Suppression by design starts or ends (the rule's suppress_when changed).
            if alarm is not None:
                transition = sm.suppress if c.suppression else sm.unsuppress
                try:
                    new, t = transition(status_of(alarm), c.at, None, "suppressed by design" if c.suppression
                                        else "suppression by design ended")
                except sm.InvalidTransition:
                    continue
                step(alarm, new, t, c.value, channels.get(c.enterprise_id, []))
                if alarm.closed_at is not None:
                    open_alarms.pop(key, None)
                touched.append(alarm)
            continue
        if alarm is None:
            if not c.active:
                continue  # a clear with nothing open (e.g. after the alarm was closed by hand)
            alarm = AlarmRow(id=new_id(), enterprise_id=c.enterprise_id, rule_id=c.rule_id,
                             device_id=c.device_id, site_id=c.site_id, key=c.key[:200], kind=c.kind,
                             state=sm.AlarmState.normal.value, active=False, acked=True, priority=c.priority,
                             message=c.message[:1000], value=_json_value(c.value), limit=c.limit, count=0,
                             first_triggered_at=at, last_triggered_at=at, cleared_at=None, acked_at=None,
                             acked_by=None, shelved_until=None, shelved_by=None, shelve_reason="",
                             closed_at=None, created_at=now, updated_at=now)
            new_alarms.append(alarm)
            open_alarms[key] = alarm
            if c.suppressed:
                # Sounds while suppressed by design: on the record, never annunciated.
                new, t = sm.suppress(status_of(alarm), c.at, None, "suppressed by design")
                step(alarm, new, t, c.value, [])
        new, t = sm.condition(status_of(alarm), c.active, c.at)
        if c.active:
            alarm.count = (alarm.count or 0) + 1
            alarm.last_triggered_at = at
            alarm.value = _json_value(c.value)
            alarm.message = c.message[:1000]
            alarm.priority = c.priority
        else:
            alarm.cleared_at = at
        step(alarm, new, t, c.value, channels.get(c.enterprise_id, []))
        if alarm.closed_at is not None:
            open_alarms.pop(key, None)
        touched.append(alarm)

    fresh = {id(a) for a in new_alarms}
    changed = {id(a): a for a in touched if id(a) not in fresh}
    updates = []
    for alarm in changed.values():
        alarm.updated_at = now
        updates.append({"b_id": alarm.id} | {f"b_{k}": getattr(alarm, k) for k in _MUTABLE})
    new_rows = [{k: getattr(a, k) for k in _ALARM_COLUMNS} for a in new_alarms]
    transitions: list[dict[str, Any]] = []
    outbox: list[dict[str, Any]] = []
    events: list[tuple[str, dict[str, Any] | Callable[[], dict[str, Any]]]] = []
    for alarm, t, snapshot, value, chans in records:
        transitions.append({"alarm_id": alarm.id, "enterprise_id": alarm.enterprise_id, "action": t.action,
                            "from_state": t.from_state.value, "to_state": t.to_state.value, "at": from_ms(t.at),
                            "user_id": t.by, "note": t.note[:1000], "value": _json_value(value)})
        topic = f"alarm.{alarm.enterprise_id}"
        notify = [ch for ch in chans if t.action in (ch.actions or []) and alarm.priority <= ch.max_priority]
        if not notify:
            events.append((topic, partial(_event_data, snapshot, t.action)))  # built after the commit
            continue
        data = _event_data(snapshot, t.action)
        events.append((topic, data))
        outbox.extend({"enterprise_id": alarm.enterprise_id, "channel_id": ch.id, "alarm_id": alarm.id,
                       "event": data, "status": "pending", "attempts": 0, "next_attempt_at": now,
                       "last_error": "", "created_at": now, "sent_at": None} for ch in notify)
    return _Plan(seen, max_id, touched, new_rows, updates, transitions, outbox, events)


def _insert_rows(db: Session, table: Any, rows: list[dict[str, Any]]) -> None:
    for i in range(0, len(rows), _INSERT_CHUNK):
        db.execute(insert(table).values(rows[i:i + _INSERT_CHUNK]))


_UPDATE_ALARM = (update(Alarm.__table__).where(Alarm.__table__.c.id == bindparam("b_id"))
                 .values({k: bindparam(f"b_{k}") for k in _MUTABLE}))


_PROCESSORS: dict[tuple[str, tuple[str, ...], str], list[Any]] = {}


def _bind_processors(table: Any, columns: tuple[str, ...], dialect: Any) -> list[Any]:
    """How SQLAlchemy would bind each column's values (None: as they are), looked up once;
    datetimes on SQLite by sqlite_datetime, which writes the same text in a fifth of the time."""
    key = (table.name, columns, dialect.name)
    procs = _PROCESSORS.get(key)
    if procs is None:
        procs = _PROCESSORS[key] = [
            sqlite_datetime if dialect.name == "sqlite" and isinstance(table.c[k].type, UTCDateTime)
            else table.c[k].type.dialect_impl(dialect).bind_processor(dialect) for k in columns]
    return procs


def sqlite_datetime(value: datetime | None) -> str | None:
    """A datetime as SQLAlchemy binds a UTCDateTime on SQLite: in UTC, without its zone, with
    microseconds."""
    if value is None:
        return None
    text = value.isoformat(" ")
    if value.tzinfo is not None:
        if text.endswith("+00:00"):
            text = text[:-6]
        else:
            value = value.astimezone(UTC).replace(tzinfo=None)
            text = value.isoformat(" ")
    return text if value.microsecond else text + ".000000"


def _json_payload(table: Any, columns: Sequence[str], rows: list[dict[str, Any]], dialect: Any) -> str | None:
    """The rows as one JSON array of arrays, each value as SQLAlchemy would bind it (dates as
    text, JSON columns as JSON text); None when a value has no JSON form (a non-finite float)."""
    procs = _bind_processors(table, tuple(columns), dialect)
    out = []
    for row in rows:
        values = []
        for k, proc in zip(columns, procs, strict=True):
            v = row[k]
            if proc is not None:
                v = proc(v)
            if isinstance(v, float) and not math.isfinite(v):
                return None
            values.append(v)
        out.append(values)
    return orjson.dumps(out).decode()


def _sqlite_writes(db: Session, plan: _Plan) -> list[tuple[str, str]] | None:
    """SQLite: the plan as one statement per table over a JSON array (json_each), built before
    the write lock is taken. Row by row (executemany) every row's step gives up the GIL and waits
    to get it back, and a multi-row VALUES statement is compiled afresh for every row count;
    the telemetry store writes its batches the same way."""
    dialect = db.get_bind().dialect
    out: list[tuple[str, str]] = []
    for table, rows in ((Alarm.__table__, plan.new_rows), (AlarmTransition.__table__, plan.transitions),
                        (OutboxMessage.__table__, plan.outbox)):
        if not rows:
            continue
        columns = list(rows[0])
        payload = _json_payload(table, columns, rows, dialect)
        if payload is None:
            return None
        names = ", ".join(f'"{c}"' for c in columns)
        picks = ", ".join(f"value->>{i}" for i in range(len(columns)))
        out.append((f"INSERT INTO {table.name} ({names}) SELECT {picks} FROM json_each(?)", payload))
    if plan.updates:
        columns = ["id", *_MUTABLE]
        rows = [{"id": u["b_id"]} | {k: u[f"b_{k}"] for k in _MUTABLE} for u in plan.updates]
        payload = _json_payload(Alarm.__table__, columns, rows, dialect)
        if payload is None:
            return None
        sets = ", ".join(f'"{k}" = j.value->>{i + 1}' for i, k in enumerate(_MUTABLE))
        out.append((f"UPDATE alarms SET {sets} FROM json_each(?) AS j WHERE alarms.id = j.value->>0", payload))
    return out


def _write_plan(db: Session, plan: _Plan, prepared: list[tuple[str, str]] | None, conn: Any = None) -> None:
    if prepared is not None:
        # On the driver's connection, in the session's transaction: through SQLAlchemy each
        # statement cost more than SQLite's work on it.
        conn = conn or driver_connection(db)
        for sql, payload in prepared:
            conn.execute(sql, (payload,))
    else:
        _insert_rows(db, Alarm.__table__, plan.new_rows)
        if plan.updates:
            db.execute(_UPDATE_ALARM, plan.updates)
        _insert_rows(db, AlarmTransition.__table__, plan.transitions)
        _insert_rows(db, OutboxMessage.__table__, plan.outbox)
    _count_outbox(db, len(plan.outbox))
    for topic, data in plan.events:
        _queue_event(db, topic, data)


def apply_condition_changes(db: Session, changes: Sequence[ConditionChange], *,
                            lock: Callable[[], None] | None = None,
                            channels: ChannelSource | None = None,
                            known_rules: set[int] | None = None,
                            plan_under_lock: bool = False) -> list[AlarmRow]:
    """Writes the alarms and transitions of a batch of condition changes (one transaction, the
    caller commits). A re-trigger of an open alarm updates it instead of opening a second one.

    `lock` is the caller's way to take SQLite's write lock (BEGIN IMMEDIATE). Everything that
    can happen before it does: the reads and the state machine run first, then the lock is
    taken, the open alarms are checked to be the ones planned from (same ids, same updated_at,
    no new alarm since) and the plan goes in as a handful of statements, whatever the batch
    size. Holding SQLite's only write lock holds up the ingest writer, and in a busy process
    every Python step and every statement waits for the GIL. When an operator action or
    another writer got in between, the plan is made again under the lock. A rule or channel
    deleted meanwhile fails the write on its foreign key; the caller retries.

    With `plan_under_lock` the lock is taken first and the plan made once under it, with no
    check: for a writer in a process of its own (alarms/writer.py), where planning waits for no
    GIL, and the check cost more than the lock is held for meanwhile.

    `channels` and `known_rules` let a caller that keeps them current (the alarm runtime: a
    channel cache, the rules its engine holds) spare the reads; a retry passes neither."""
    ents = {c.enterprise_id for c in changes}
    channels_of = channels(db, ents) if channels is not None else enabled_channels(db, ents)
    rule_ids = {c.rule_id for c in changes}
    existing_rules = (rule_ids & known_rules if known_rules is not None
                      else set(db.scalars(select(AlarmRule.id).where(AlarmRule.id.in_(rule_ids)))))
    sqlite = not _is_postgres(db)
    conn = driver_connection(db) if sqlite else None
    if lock is not None and plan_under_lock:
        lock()
        lock = None  # held from here to the commit
    plan = _plan(db, changes, channels_of, existing_rules, conn)
    prepared = _sqlite_writes(db, plan) if sqlite else None
    if lock is not None:
        lock()
        params = _pair_params({(c.rule_id, c.device_id) for c in changes})
        # One statement: the open alarms planned from, and any alarm opened since.
        if plan.max_id is None:
            found = db.execute(_OPEN_ALARM_STAMPS, params)
        else:
            found = db.execute(_OPEN_ALARM_STAMPS_SINCE, params | {"after": plan.max_id})
        if dict(found.all()) != plan.seen:
            plan = _plan(db, changes, channels_of, existing_rules, conn)
            prepared = _sqlite_writes(db, plan) if sqlite else None
    _write_plan(db, plan, prepared, conn)
    # Alarms this session holds as ORM objects are read again after these Core writes.
    for obj in list(db.identity_map.values()):
        if isinstance(obj, Alarm):
            db.expire(obj)
    return plan.touched


def expire_shelving(db: Session, *, now: datetime | None = None) -> int:
    """Returns shelved alarms whose expiry has passed to the state their condition has now."""
    now = now or utcnow()
    due = list(db.scalars(select(Alarm).where(Alarm.state == sm.AlarmState.shelved.value,
                                              Alarm.shelved_until <= now).with_for_update()))
    for alarm in due:
        new, t = sm.expire_shelve(status_of(alarm), to_ms(now))
        _apply(db, alarm, new, t)
        alarm.shelve_reason = ""
    db.flush()
    return len(due)


def open_active_alarms(db: Session, rule_id: int | None = None) -> list[tuple[int, int]]:
    """(rule_id, device_id) of every open alarm whose condition is active (of one rule, or all),
    so a restarted or re-enabled rule clears them when the value recovers."""
    stmt = select(Alarm.rule_id, Alarm.device_id).where(Alarm.closed_at.is_(None), Alarm.active.is_(True))
    if rule_id is not None:
        stmt = stmt.where(Alarm.rule_id == rule_id)
    rows = db.execute(stmt)
    return [(r, d) for r, d in rows if r is not None]


# ---------------------------------------------------------------------------------------------
# notification channels


def _channel_config_for_audit(config: dict[str, Any]) -> dict[str, Any]:
    return {k: ("***" if k in SECRET_CONFIG_KEYS else v) for k, v in config.items()}


def create_channel(db: Session, *, actor: Principal, data: ChannelIn, ip: str = "") -> NotificationChannel:
    actor.require("alarms:configure")
    ch = NotificationChannel(enterprise_id=actor.enterprise_id, name=data.name, kind=data.kind,
                             config=data.config, max_priority=data.max_priority, actions=list(data.actions),
                             enabled=data.enabled)
    db.add(ch)
    db.flush()
    _queue_event(db, f"notification_channel.{ch.enterprise_id}", {"channel_id": ch.id})
    audit.record(db, actor=actor, action="create", entity_type="notification_channel", entity_id=ch.id,
                 after={"name": ch.name, "kind": ch.kind, "config": _channel_config_for_audit(ch.config)},
                 enterprise_id=ch.enterprise_id, ip=ip)
    return ch


def get_channel(db: Session, *, actor: Principal, channel_id: int) -> NotificationChannel:
    actor.require("alarms:read")
    ch = db.get(NotificationChannel, channel_id)
    if ch is None or not actor.sees_enterprise(ch.enterprise_id):
        raise NotFound("notification channel", channel_id)
    return ch


def list_channels(db: Session, *, actor: Principal, page: PageParams) -> tuple[list[NotificationChannel], str | None]:
    actor.require("alarms:read")
    stmt = select(NotificationChannel)
    if not actor.is_platform_admin:
        stmt = stmt.where(NotificationChannel.enterprise_id == actor.enterprise_id)
    return paginate(db, stmt, page, key=(NotificationChannel.id,))


def update_channel(db: Session, *, actor: Principal, channel_id: int, data: ChannelPatch,
                   ip: str = "") -> NotificationChannel:
    actor.require("alarms:configure")
    ch = get_channel(db, actor=actor, channel_id=channel_id)
    before = {"name": ch.name, "config": _channel_config_for_audit(ch.config), "enabled": ch.enabled}
    patch = data.model_dump(exclude_unset=True)
    if "config" in patch and patch["config"] is not None:
        # Secrets left as '***' (as the API shows them) keep their stored value.
        merged = dict(ch.config or {})
        merged.update({k: v for k, v in patch["config"].items() if v != "***"})
        patch["config"] = merged
    candidate = ChannelIn(name=patch.get("name") or ch.name, kind=ch.kind,  # type: ignore[arg-type]
                          config=patch.get("config") or ch.config,
                          max_priority=patch.get("max_priority") or ch.max_priority,
                          actions=patch.get("actions") or ch.actions, enabled=ch.enabled
                          if patch.get("enabled") is None else patch["enabled"])
    ch.name, ch.config, ch.max_priority = candidate.name, candidate.config, candidate.max_priority
    ch.actions, ch.enabled = list(candidate.actions), candidate.enabled
    db.flush()
    _queue_event(db, f"notification_channel.{ch.enterprise_id}", {"channel_id": ch.id})
    audit.record(db, actor=actor, action="update", entity_type="notification_channel", entity_id=ch.id,
                 before=before, after={"name": ch.name, "config": _channel_config_for_audit(ch.config),
                                       "enabled": ch.enabled}, enterprise_id=ch.enterprise_id, ip=ip)
    return ch


def delete_channel(db: Session, *, actor: Principal, channel_id: int, ip: str = "") -> None:
    actor.require("alarms:configure")
    ch = get_channel(db, actor=actor, channel_id=channel_id)
    ent, name = ch.enterprise_id, ch.name
    # The dispatcher locks outbox rows and then, delivering in-app, references their channel;
    # deleting the channel and its outbox rows by cascade takes the two the other way round,
    # and PostgreSQL ends one of the two transactions as a deadlock. So the channel's outbox
    # rows are locked first (waiting for a delivery in progress to commit), then the channel.
    db.execute(select(OutboxMessage.id).where(OutboxMessage.channel_id == ch.id)
               .order_by(OutboxMessage.id).with_for_update())
    db.delete(ch)
    db.flush()
    _queue_event(db, f"notification_channel.{ent}", {"channel_id": channel_id, "deleted": True})
    audit.record(db, actor=actor, action="delete", entity_type="notification_channel", entity_id=channel_id,
                 before={"name": name}, enterprise_id=ent, ip=ip)


def list_outbox(db: Session, *, actor: Principal, channel_id: int) -> list[OutboxMessage]:
    ch = get_channel(db, actor=actor, channel_id=channel_id)
    return list(db.scalars(select(OutboxMessage).where(OutboxMessage.channel_id == ch.id)
                           .order_by(OutboxMessage.id.desc()).limit(200)))


def list_in_app(db: Session, *, actor: Principal, limit: int = 50) -> list[InAppNotification]:
    actor.require("alarms:read")
    stmt = select(InAppNotification)
    if not actor.is_platform_admin:
        stmt = stmt.where(InAppNotification.enterprise_id == actor.enterprise_id)
    return list(db.scalars(stmt.order_by(InAppNotification.id.desc()).limit(limit)))


# ---------------------------------------------------------------------------------------------
# KPIs


def kpis(db: Session, *, actor: Principal, start: datetime, end: datetime) -> dict[str, Any]:
    """ISA-18.2 metrics for the actor's enterprise over [start, end)."""
    actor.require("alarms:read")
    if end <= start:
        raise Unprocessable("end: must be after start.",
                            errors=[{"field": "end", "message": "must be after start", "type": "value_error"}])
    if end - start > timedelta(days=92):
        raise Unprocessable("end: the KPI window is limited to 92 days.",
                            errors=[{"field": "end", "message": "at most 92 days", "type": "value_error"}])
    from ecoplat.tenancy.models import User

    ent = actor.enterprise_id
    rows = db.execute(
        select(AlarmTransition.at, Alarm.rule_id, Alarm.device_id, Alarm.priority, Alarm.message)
        .join(Alarm, Alarm.id == AlarmTransition.alarm_id)
        .where(AlarmTransition.enterprise_id == ent, AlarmTransition.action == "alarm",
               AlarmTransition.at >= start, AlarmTransition.at < end))
    events = [kpi_math.Annunciation(at=to_ms(at), alarm_key=(rule_id, device_id), priority=prio,
                                    label=message[:120]) for at, rule_id, device_id, prio, message in rows]
    open_rows = db.scalars(select(Alarm).where(Alarm.enterprise_id == ent, Alarm.closed_at.is_(None),
                                               Alarm.first_triggered_at < end))
    open_alarms = [kpi_math.OpenAlarm(alarm_id=a.id, first_triggered_at=to_ms(a.first_triggered_at),
                                      active=a.active, label=a.message[:120], priority=a.priority)
                   for a in open_rows]
    operators = sum(1 for roles in db.scalars(select(User.roles).where(User.enterprise_id == ent,
                                                                       User.is_active.is_(True)))
                    if "operator" in (roles or []))
    result = kpi_math.compute(events, open_alarms, start=to_ms(start), end=to_ms(end), operators=operators or 1)
    result["start"], result["end"] = start, end
    for item in result["rate_series"]:  # type: ignore[attr-defined]
        item["start"] = from_ms(item["start"]).isoformat()
    for flood in result["floods"]:  # type: ignore[attr-defined]
        flood["start"] = from_ms(flood["start"]).isoformat()
        flood["end"] = from_ms(flood["end"]).isoformat()
    return result
