"""The audit trail: every write through the API leaves one event (who, what, when, before/after).

Every domain calls `record(...)` in the same unit of work as the write it describes, so the event
and the change commit or roll back together."""

from __future__ import annotations

import enum
import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.orm import Session

from ecoplat.db import utcnow
from ecoplat.tenancy.auth import Principal
from ecoplat.tenancy.models import AuditEvent

# Columns whose values must never land in the audit trail, whatever the table.
SECRET_COLUMNS = frozenset({"password_hash", "key_hash", "secret", "token", "access_token",
                            "credentials", "password"})


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, uuid.UUID | bytes):
        return value.hex() if isinstance(value, bytes) else str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    return str(value)


def snapshot(obj: Any, *, exclude: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """The row's column values as a JSON-able dict (secrets left out), for before/after."""
    mapper = inspect(obj).mapper
    out: dict[str, Any] = {}
    for attr in mapper.column_attrs:
        key = attr.key
        if key in SECRET_COLUMNS or key in exclude:
            continue
        out[key] = _jsonable(getattr(obj, key))
    return out


def changed(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any]:
    """Only the keys whose values differ, so an update's event shows what changed."""
    before, after = before or {}, after or {}
    return {k: after.get(k) for k in set(before) | set(after) if before.get(k) != after.get(k)}


def record(db: Session, *, actor: Principal, action: str, entity_type: str, entity_id: object,
           before: dict[str, Any] | Any | None = None, after: dict[str, Any] | Any | None = None,
           enterprise_id: int | None = None, ip: str = "") -> AuditEvent:
    """Adds one audit event for a write and flushes it.

    `before`/`after` may be dicts or ORM rows (snapshotted here). `enterprise_id` is the tenant
    the object belongs to (so its admin reads the event); it defaults to the actor's enterprise,
    or None for the platform-level "system" actor."""
    if before is not None and not isinstance(before, dict):
        before = snapshot(before)
    if after is not None and not isinstance(after, dict):
        after = snapshot(after)
    if enterprise_id is None and actor.enterprise_id:
        enterprise_id = actor.enterprise_id
    event = AuditEvent(
        enterprise_id=enterprise_id,
        actor_user_id=actor.user_id,
        actor=actor.label[:320],
        action=action[:32],
        entity_type=entity_type[:64],
        entity_id=str(entity_id)[:64],
        before=_jsonable(before) if before is not None else None,
        after=_jsonable(after) if after is not None else None,
        at=utcnow(),
        ip=(ip or "")[:64],
    )
    db.add(event)
    db.flush()
    return event
