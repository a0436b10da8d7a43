"""Telemetry reads scoped by tenant, and retention settings per enterprise. Keyword-only
functions taking the session and the acting principal; the store is passed in (it lives on
app.state.telemetry)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from ecoplat.connect.models import Device
from ecoplat.connect.service import get_device
from ecoplat.db import Database, utcnow
from ecoplat.errors import NotFound
from ecoplat.telemetry.base import SqlTelemetryStore
from ecoplat.telemetry.models import TelemetryRetention
from ecoplat.telemetry.points import Bucket, Sample
from ecoplat.telemetry.query import DAY_MS
from ecoplat.telemetry.schemas import RetentionIn, RetentionOut
from ecoplat.tenancy import audit
from ecoplat.tenancy.auth import Principal
from ecoplat.tenancy.models import Enterprise

log = logging.getLogger(__name__)


def readable_device(db: Session, *, actor: Principal, device_id: int) -> Device:
    """The device if the actor may read its telemetry (404 for another tenant's device)."""
    actor.require("devices:read")
    return get_device(db, actor=actor, device_id=device_id)


def latest(db: Session, *, actor: Principal, store: SqlTelemetryStore, device_id: int,
           keys: Sequence[str] | None = None) -> dict[str, Sample]:
    readable_device(db, actor=actor, device_id=device_id)
    return store.latest(device_id, keys)


def keys(db: Session, *, actor: Principal, store: SqlTelemetryStore, device_id: int) -> list[str]:
    readable_device(db, actor=actor, device_id=device_id)
    return store.keys(device_id)


def raw_range(db: Session, *, actor: Principal, store: SqlTelemetryStore, device_id: int,
              keys: Sequence[str] | None, start_ms: int, end_ms: int, limit: int,
              newest_first: bool = False) -> dict[str, list[Sample]]:
    readable_device(db, actor=actor, device_id=device_id)
    return store.range(device_id, list(keys) if keys else store.keys(device_id), start_ms, end_ms, limit,
                       newest_first=newest_first)


def aggregated(db: Session, *, actor: Principal, store: SqlTelemetryStore, device_id: int,
               keys: Sequence[str] | None, start_ms: int, end_ms: int,
               interval_ms: int) -> dict[str, list[Bucket]]:
    readable_device(db, actor=actor, device_id=device_id)
    return store.aggregate(device_id, list(keys) if keys else store.keys(device_id), start_ms, end_ms,
                           interval_ms)


def _visible_enterprise(db: Session, actor: Principal, enterprise_id: int) -> Enterprise:
    enterprise = db.get(Enterprise, enterprise_id)
    if enterprise is None or not actor.sees_enterprise(enterprise_id):
        raise NotFound("enterprise", enterprise_id)
    return enterprise


def get_retention(db: Session, *, actor: Principal, enterprise_id: int) -> RetentionOut:
    actor.require("enterprise:read")
    _visible_enterprise(db, actor, enterprise_id)
    row = db.get(TelemetryRetention, enterprise_id)
    return RetentionOut(enterprise_id=enterprise_id, days=row.days if row else None,
                        updated_at=row.updated_at if row else None)


def set_retention(db: Session, *, actor: Principal, enterprise_id: int, data: RetentionIn,
                  ip: str = "") -> RetentionOut:
    """Sets (or, with days=null, removes) the enterprise's telemetry retention; audited."""
    _visible_enterprise(db, actor, enterprise_id)
    actor.require("enterprise:write")
    row = db.get(TelemetryRetention, enterprise_id)
    before = {"days": row.days} if row else {"days": None}
    if data.days is None:
        if row is not None:
            db.delete(row)
        row = None
    elif row is None:
        row = TelemetryRetention(enterprise_id=enterprise_id, days=data.days, updated_at=utcnow())
        db.add(row)
    else:
        row.days = data.days
        row.updated_at = utcnow()
    db.flush()
    audit.record(db, actor=actor, action="update", entity_type="telemetry_retention",
                 entity_id=enterprise_id, before=before, after={"days": data.days},
                 enterprise_id=enterprise_id, ip=ip)
    return RetentionOut(enterprise_id=enterprise_id, days=data.days,
                        updated_at=row.updated_at if row else None)


def apply_all_retention(database: Database, store: SqlTelemetryStore,
                        now_ms: int | None = None) -> dict[int, int]:
    """Runs every enterprise's retention once; returns {enterprise_id: raw points deleted}.
    A platform job (the telemetry runtime calls it periodically), so no acting user."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    with database.session() as db:
        settings = db.execute(select(TelemetryRetention.enterprise_id, TelemetryRetention.days)).all()
    out: dict[int, int] = {}
    for enterprise_id, days in settings:
        out[enterprise_id] = store.apply_retention(enterprise_id, now_ms - days * DAY_MS)
        if out[enterprise_id]:
            log.info("telemetry retention deleted %d points", out[enterprise_id],
                     extra={"enterprise_id": enterprise_id, "days": days})
    return out
