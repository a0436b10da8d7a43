"""Connector configurations: keyword-only functions taking the session and the acting principal;
every read and write is scoped by tenant here, and every write leaves an audit event."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from ecoplat.connect.gateways.base import ConnectorStatus, connector_type
from ecoplat.connect.gateways.models import ConnectorConfig
from ecoplat.connect.gateways.schemas import ConnectorIn, ConnectorUpdate
from ecoplat.connect.service import get_device
from ecoplat.db import utcnow
from ecoplat.errors import Conflict, NotFound
from ecoplat.pagination import PageParams, paginate
from ecoplat.tenancy import audit
from ecoplat.tenancy.auth import Principal

SECRET_MASK = "********"
SECRET_FIELDS = frozenset({"password"})


@dataclass(frozen=True, kw_only=True)
class ConnectorSpec:
    """What the runtime needs to run one connector, detached from the session."""

    id: int
    enterprise_id: int
    device_id: int
    type: str
    config: dict[str, Any]
    enabled: bool
    version: int


def spec_of(row: ConnectorConfig) -> ConnectorSpec:
    return ConnectorSpec(id=row.id, enterprise_id=row.enterprise_id, device_id=row.device_id, type=row.type,
                         config=dict(row.config), enabled=row.enabled, version=row.config_version)


def masked_config(config: dict[str, Any]) -> dict[str, Any]:
    """The configuration as people and the audit trail see it: secrets replaced by a mask."""
    return {k: (SECRET_MASK if k in SECRET_FIELDS and v else v) for k, v in config.items()}


def audit_view(row: ConnectorConfig) -> dict[str, Any]:
    return {"name": row.name, "device_id": row.device_id, "type": row.type,
            "config": masked_config(row.config or {}), "enabled": row.enabled}


def _validated(type_name: str, raw: dict[str, Any]) -> dict[str, Any]:
    cls = connector_type(type_name)
    return cls.validate_config(raw).model_dump(mode="json")


def _name_free(db: Session, enterprise_id: int, name: str, *, except_id: int | None = None) -> None:
    stmt = select(ConnectorConfig.id).where(ConnectorConfig.enterprise_id == enterprise_id,
                                           ConnectorConfig.name == name)
    existing = db.scalar(stmt)
    if existing is not None and existing != except_id:
        raise Conflict(f"name: your enterprise already has a connector named '{name}'; choose another name.",
                       errors=[{"field": "name", "message": "already used", "type": "conflict"}])


def _owned_device(db: Session, *, actor: Principal, device_id: int) -> int:
    device = get_device(db, actor=actor, device_id=device_id)
    if device.enterprise_id is None:
        raise Conflict(f"device_id: device {device_id} has not been claimed yet; claim it before connecting equipment to it.",
                       errors=[{"field": "device_id", "message": "device not claimed", "type": "conflict"}])
    return device.enterprise_id


def get_connector(db: Session, *, actor: Principal, connector_id: int) -> ConnectorConfig:
    actor.require("devices:read")
    row = db.get(ConnectorConfig, connector_id)
    if row is None or not actor.sees_enterprise(row.enterprise_id):
        raise NotFound("connector", connector_id)
    return row


def list_connectors(db: Session, *, actor: Principal, page: PageParams, device_id: int | None = None,
                    type: str | None = None) -> tuple[list[ConnectorConfig], str | None]:
    actor.require("devices:read")
    stmt = select(ConnectorConfig)
    if not actor.is_platform_admin:
        stmt = stmt.where(ConnectorConfig.enterprise_id == actor.enterprise_id)
    if device_id is not None:
        stmt = stmt.where(ConnectorConfig.device_id == device_id)
    if type is not None:
        stmt = stmt.where(ConnectorConfig.type == type)
    return paginate(db, stmt, page, key=(ConnectorConfig.id,))


def create_connector(db: Session, *, actor: Principal, data: ConnectorIn, ip: str = "") -> ConnectorConfig:
    actor.require("devices:write")
    enterprise_id = _owned_device(db, actor=actor, device_id=data.device_id)
    config = _validated(data.type, data.config)
    _name_free(db, enterprise_id, data.name)
    row = ConnectorConfig(enterprise_id=enterprise_id, device_id=data.device_id, name=data.name, type=data.type,
                          config=config, enabled=data.enabled, status="stopped", config_version=1)
    db.add(row)
    db.flush()
    audit.record(db, actor=actor, action="create", entity_type="connector", entity_id=row.id,
                 after=audit_view(row), enterprise_id=enterprise_id, ip=ip)
    return row


def update_connector(db: Session, *, actor: Principal, connector_id: int, data: ConnectorUpdate,
                     ip: str = "") -> ConnectorConfig:
    actor.require("devices:write")
    row = get_connector(db, actor=actor, connector_id=connector_id)
    before = audit_view(row)
    before_config = dict(row.config or {})
    if data.device_id is not None and data.device_id != row.device_id:
        if _owned_device(db, actor=actor, device_id=data.device_id) != row.enterprise_id:
            raise NotFound("device", data.device_id)
        row.device_id = data.device_id
    if data.name is not None and data.name != row.name:
        _name_free(db, row.enterprise_id, data.name, except_id=row.id)
        row.name = data.name
    if data.config is not None:
        raw = dict(data.config)
        for secret in SECRET_FIELDS:
            if raw.get(secret) == SECRET_MASK:  # the form sends the mask back unchanged
                raw[secret] = (row.config or {}).get(secret)
        row.config = _validated(row.type, raw)
    if data.enabled is not None:
        row.enabled = data.enabled
    if (row.device_id, row.config, row.enabled) != (before["device_id"], before_config, before["enabled"]):
        row.config_version = (row.config_version or 0) + 1
    db.flush()
    audit.record(db, actor=actor, action="update", entity_type="connector", entity_id=row.id,
                 before=before, after=audit_view(row), enterprise_id=row.enterprise_id, ip=ip)
    return row


def set_enabled(db: Session, *, actor: Principal, connector_id: int, enabled: bool, ip: str = "") -> ConnectorConfig:
    return update_connector(db, actor=actor, connector_id=connector_id, data=ConnectorUpdate(enabled=enabled), ip=ip)


def delete_connector(db: Session, *, actor: Principal, connector_id: int, ip: str = "") -> None:
    actor.require("devices:write")
    row = get_connector(db, actor=actor, connector_id=connector_id)
    before = audit_view(row)
    enterprise_id = row.enterprise_id
    db.delete(row)
    db.flush()
    audit.record(db, actor=actor, action="delete", entity_type="connector", entity_id=connector_id,
                 before=before, enterprise_id=enterprise_id, ip=ip)


# ---- used by the runtime (a platform job, not a user's request) -------------------------------

def claim_connectors(db: Session, *, owner: str, lease_s: float, now: datetime | None = None) -> list[ConnectorSpec]:
    """Every enabled connector this process runs or may take over (no owner, its own, or an
    owner whose lease ran out), leased to `owner`; frees the leases of its disabled ones.

    Reads first and writes only what must change (a new claim, a lease past half its time, a
    release), so an idle round costs one SELECT: on SQLite every write takes the database lock
    the ingest writer needs. The conditional UPDATE makes two processes racing for one
    connector end with one owner."""
    now = now or utcnow()
    until = now + timedelta(seconds=lease_s)
    renew_before = now + timedelta(seconds=lease_s / 2)
    claimable = or_(ConnectorConfig.owner.is_(None), ConnectorConfig.owner == owner,
                    ConnectorConfig.lease_until.is_(None), ConnectorConfig.lease_until < now)
    rows = db.execute(select(ConnectorConfig.id, ConnectorConfig.enabled, ConnectorConfig.owner,
                             ConnectorConfig.lease_until)
                      .where(or_(ConnectorConfig.owner == owner, and_(ConnectorConfig.enabled.is_(True), claimable)))
                      .order_by(ConnectorConfig.id)).all()
    mine: list[int] = []
    for cid, enabled, row_owner, lease_until in rows:
        if not enabled:  # disabled while this process held it
            db.execute(update(ConnectorConfig).where(ConnectorConfig.id == cid, ConnectorConfig.owner == owner)
                       .values(owner=None, lease_until=None, status="stopped")
                       .execution_options(synchronize_session=False))
            continue
        if row_owner == owner and lease_until is not None and lease_until > renew_before:
            mine.append(cid)  # held, and the lease has time left
            continue
        result = db.execute(update(ConnectorConfig).where(ConnectorConfig.id == cid,
                                                          ConnectorConfig.enabled.is_(True), claimable)
                            .values(owner=owner, lease_until=until).execution_options(synchronize_session=False))
        if result.rowcount == 1:  # type: ignore[attr-defined]
            mine.append(cid)
    if not mine:
        return []
    specs = db.scalars(select(ConnectorConfig).where(ConnectorConfig.id.in_(mine)).order_by(ConnectorConfig.id)
                       .execution_options(populate_existing=True)).all()
    return [spec_of(r) for r in specs]


def release_connectors(db: Session, *, owner: str, status: str = "stopped") -> None:
    """Gives up every lease of `owner` (a clean shutdown) so another process takes over at once."""
    db.execute(update(ConnectorConfig).where(ConnectorConfig.owner == owner)
               .values(owner=None, lease_until=None, status=status).execution_options(synchronize_session=False))


def save_status(db: Session, *, connector_id: int, status: ConnectorStatus, owner: str | None = None) -> None:
    """Persists the live state so every process and the pages see it (no audit: not a user's
    write). With `owner`, only while that process still holds the lease."""
    values: dict[str, Any] = {"status": status.state.value}
    if status.last_error is not None:
        values["last_error"] = status.last_error[:2000]
        values["last_error_at"] = status.last_error_at
    if status.last_success_at is not None:
        values["last_success_at"] = status.last_success_at
    stmt = update(ConnectorConfig).where(ConnectorConfig.id == connector_id)
    if owner is not None:
        stmt = stmt.where(ConnectorConfig.owner == owner)
    db.execute(stmt.values(**values).execution_options(synchronize_session=False))


def stored_status(row: ConnectorConfig) -> dict[str, datetime | str | None]:
    return {"state": row.status, "last_error": row.last_error, "last_error_at": row.last_error_at,
            "last_success_at": row.last_success_at}
