"""Devices, profiles, tokens, attributes and provisioning. Keyword-only functions that take the
session and the acting principal; every read and write is scoped by tenant here. Services only
flush(); the request's unit of work commits."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, func, not_, or_, select
from sqlalchemy.orm import Session

from ecoplat.connect.ingest import upsert_attributes
from ecoplat.connect.models import (
    AttributeScope,
    Device,
    DeviceAttribute,
    DeviceErrorLog,
    DeviceProfile,
    DeviceReject,
)
from ecoplat.connect.schemas import (
    DeviceIn,
    DeviceOut,
    DeviceStatus,
    DeviceUpdate,
    ProfileIn,
    ProfileUpdate,
    ProvisionIn,
)
from ecoplat.db import utcnow
from ecoplat.errors import Conflict, NotFound, ProblemError, Unprocessable
from ecoplat.pagination import PageParams, paginate
from ecoplat.tenancy import audit
from ecoplat.tenancy.auth import Principal
from ecoplat.tenancy.models import Equipment

# Seconds without data before a device without a profile counts as offline.
DEFAULT_INACTIVITY_TIMEOUT_S = 600
TOKEN_PREFIX_LENGTH = 6
_SECRET_COLUMNS = frozenset({"token_hash", "claim_code_hash"})
# Claim codes avoid look-alike characters (0/O, 1/I) because people type them from a label.
_CLAIM_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


class Gone(ProblemError):
    status, type_slug = 410, "gone"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _snapshot(device: Device) -> dict[str, Any]:
    return audit.snapshot(device, exclude=_SECRET_COLUMNS)


# ---- visibility -------------------------------------------------------------------------------


def get_device(db: Session, *, actor: Principal, device_id: int) -> Device:
    """The device if the actor's enterprise owns it (or, while unclaimed, provisioned it);
    404 otherwise, so another tenant cannot even learn that the id exists."""
    device = db.get(Device, device_id)
    if device is None or not _visible(actor, device):
        raise NotFound("device", device_id)
    return device


def _visible(actor: Principal, device: Device) -> bool:
    if actor.is_platform_admin:
        return True
    if device.enterprise_id is not None:
        return device.enterprise_id == actor.enterprise_id
    return device.provisioned_by_enterprise_id == actor.enterprise_id


def _owned_device(db: Session, *, actor: Principal, device_id: int) -> Device:
    """A device the actor's enterprise owns (claimed); unclaimed devices cannot be configured."""
    device = get_device(db, actor=actor, device_id=device_id)
    if device.enterprise_id is None:
        raise Conflict("This device has not been claimed yet; claim it with its claim code first.")
    return device


# ---- status ----------------------------------------------------------------------------------


def device_status(last_seen_at: datetime | None, timeout_s: int, now: datetime) -> DeviceStatus:
    """Online while the last message is younger than the profile's inactivity timeout."""
    if last_seen_at is None or (now - last_seen_at).total_seconds() > timeout_s:
        return DeviceStatus.offline
    return DeviceStatus.online


def _timeouts(db: Session, profile_ids: set[int]) -> dict[int, int]:
    if not profile_ids:
        return {}
    return dict(db.execute(select(DeviceProfile.id, DeviceProfile.inactivity_timeout_s)
                           .where(DeviceProfile.id.in_(profile_ids))).all())


def to_out(db: Session, devices: list[Device], *, now: datetime | None = None) -> list[DeviceOut]:
    now = now or utcnow()
    timeouts = _timeouts(db, {d.profile_id for d in devices if d.profile_id is not None})
    out = []
    for d in devices:
        timeout = timeouts.get(d.profile_id, DEFAULT_INACTIVITY_TIMEOUT_S) if d.profile_id else DEFAULT_INACTIVITY_TIMEOUT_S
        out.append(DeviceOut(
            id=d.id, enterprise_id=d.enterprise_id, name=d.name, type=d.type, label=d.label,
            profile_id=d.profile_id, equipment_id=d.equipment_id, is_gateway=d.is_gateway,
            gateway_id=d.gateway_id, token_prefix=d.token_prefix, token_revoked=d.token_revoked,
            status=device_status(d.last_seen_at, timeout, now), last_seen_at=d.last_seen_at,
            last_activity=d.last_activity, messages_total=d.messages_total, points_total=d.points_total,
            errors_total=d.errors_total, claimed_at=d.claimed_at, created_at=d.created_at,
            updated_at=d.updated_at))
    return out


# ---- profiles ---------------------------------------------------------------------------------


def get_profile(db: Session, *, actor: Principal, profile_id: int) -> DeviceProfile:
    profile = db.get(DeviceProfile, profile_id)
    if profile is None or not actor.sees_enterprise(profile.enterprise_id):
        raise NotFound("device profile", profile_id)
    return profile


def list_profiles(db: Session, *, actor: Principal, page: PageParams) -> tuple[list[DeviceProfile], str | None]:
    stmt = select(DeviceProfile).where(DeviceProfile.enterprise_id == actor.enterprise_id)
    return paginate(db, stmt, page, key=(DeviceProfile.id,))


def _profile_name_free(db: Session, enterprise_id: int, name: str, exclude_id: int | None = None) -> None:
    stmt = select(DeviceProfile.id).where(DeviceProfile.enterprise_id == enterprise_id, DeviceProfile.name == name)
    if exclude_id is not None:
        stmt = stmt.where(DeviceProfile.id != exclude_id)
    if db.scalar(stmt) is not None:
        raise Conflict(f"A device profile named '{name}' already exists in your enterprise.")


def create_profile(db: Session, *, actor: Principal, data: ProfileIn, ip: str = "") -> DeviceProfile:
    actor.require("devices:write")
    _profile_name_free(db, actor.enterprise_id, data.name)
    profile = DeviceProfile(enterprise_id=actor.enterprise_id, **data.model_dump(mode="json"))
    db.add(profile)
    db.flush()
    audit.record(db, actor=actor, action="create", entity_type="device_profile", entity_id=profile.id,
                 after=profile, enterprise_id=profile.enterprise_id, ip=ip)
    return profile


def update_profile(db: Session, *, actor: Principal, profile_id: int, data: ProfileUpdate,
                   ip: str = "") -> DeviceProfile:
    actor.require("devices:write")
    profile = get_profile(db, actor=actor, profile_id=profile_id)
    before = audit.snapshot(profile)
    changes = data.model_dump(mode="json", exclude_unset=True)
    if changes.get("name"):
        _profile_name_free(db, profile.enterprise_id, changes["name"], exclude_id=profile.id)
    for key, value in changes.items():
        if value is None:
            raise Unprocessable(f"{key}: may not be null", errors=[{"field": key, "message": "may not be null"}])
        setattr(profile, key, value)
    db.flush()
    audit.record(db, actor=actor, action="update", entity_type="device_profile", entity_id=profile.id,
                 before=before, after=profile, enterprise_id=profile.enterprise_id, ip=ip)
    return profile


def delete_profile(db: Session, *, actor: Principal, profile_id: int, ip: str = "") -> None:
    actor.require("devices:write")
    profile = get_profile(db, actor=actor, profile_id=profile_id)
    in_use = db.scalar(select(func.count()).select_from(Device).where(Device.profile_id == profile.id))
    if in_use:
        raise Conflict(f"{in_use} device(s) still use this profile; move them to another profile first.")
    before = audit.snapshot(profile)
    db.delete(profile)
    db.flush()
    audit.record(db, actor=actor, action="delete", entity_type="device_profile", entity_id=profile_id,
                 before=before, enterprise_id=before["enterprise_id"], ip=ip)


# ---- devices ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceFilters:
    profile_id: int | None = None
    equipment_id: int | None = None
    status: DeviceStatus | None = None
    is_gateway: bool | None = None
    gateway_id: int | None = None
    q: str | None = None


def _status_condition(db: Session, enterprise_id: int, now: datetime) -> Any:
    """SQL for "online": last_seen_at newer than the device's profile timeout. Profiles are few
    per enterprise, so one OR branch per distinct timeout keeps it portable and index-friendly."""
    by_timeout: dict[int, list[int]] = {}
    for pid, timeout in db.execute(select(DeviceProfile.id, DeviceProfile.inactivity_timeout_s)
                                   .where(DeviceProfile.enterprise_id == enterprise_id)).all():
        by_timeout.setdefault(timeout, []).append(pid)
    branches = [and_(Device.profile_id.in_(pids), Device.last_seen_at >= now - timedelta(seconds=t))
                for t, pids in by_timeout.items()]
    branches.append(and_(Device.profile_id.is_(None),
                         Device.last_seen_at >= now - timedelta(seconds=DEFAULT_INACTIVITY_TIMEOUT_S)))
    return or_(*branches)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def device_query(db: Session, *, actor: Principal, filters: DeviceFilters) -> Select[Any]:
    stmt = select(Device).where(Device.enterprise_id == actor.enterprise_id)
    if filters.profile_id is not None:
        stmt = stmt.where(Device.profile_id == filters.profile_id)
    if filters.equipment_id is not None:
        stmt = stmt.where(Device.equipment_id == filters.equipment_id)
    if filters.is_gateway is not None:
        stmt = stmt.where(Device.is_gateway == filters.is_gateway)
    if filters.gateway_id is not None:
        stmt = stmt.where(Device.gateway_id == filters.gateway_id)
    if filters.q:
        stmt = stmt.where(func.lower(Device.name).like(f"%{_escape_like(filters.q.lower())}%", escape="\\"))
    if filters.status is not None:
        online = _status_condition(db, actor.enterprise_id, utcnow())
        stmt = stmt.where(online if filters.status == DeviceStatus.online
                          else or_(Device.last_seen_at.is_(None), not_(online)))
    return stmt


def list_devices(db: Session, *, actor: Principal, filters: DeviceFilters, page: PageParams
                 ) -> tuple[list[Device], str | None]:
    actor.require("devices:read")
    return paginate(db, device_query(db, actor=actor, filters=filters), page, key=(Device.id,))


def list_provisioned(db: Session, *, actor: Principal, page: PageParams) -> tuple[list[Device], str | None]:
    """Devices the actor's enterprise pre-created and nobody has claimed yet."""
    actor.require("devices:provision")
    stmt = select(Device).where(Device.provisioned_by_enterprise_id == actor.enterprise_id,
                                Device.enterprise_id.is_(None))
    return paginate(db, stmt, page, key=(Device.id,))


def _check_refs(db: Session, *, enterprise_id: int, profile_id: int | None, equipment_id: int | None,
                gateway_id: int | None, device_id: int | None = None) -> None:
    """Referenced profile, equipment and gateway must be the same enterprise's (422 otherwise,
    without telling whether the id exists elsewhere)."""
    if profile_id is not None:
        found = db.scalar(select(DeviceProfile.id).where(DeviceProfile.id == profile_id,
                                                         DeviceProfile.enterprise_id == enterprise_id))
        if found is None:
            raise Unprocessable(f"profile_id: no device profile {profile_id} in your enterprise",
                                errors=[{"field": "profile_id", "message": "unknown device profile"}])
    if equipment_id is not None:
        found = db.scalar(select(Equipment.id).where(Equipment.id == equipment_id,
                                                     Equipment.enterprise_id == enterprise_id))
        if found is None:
            raise Unprocessable(f"equipment_id: no equipment {equipment_id} in your enterprise",
                                errors=[{"field": "equipment_id", "message": "unknown equipment"}])
    if gateway_id is not None:
        if gateway_id == device_id:
            raise Unprocessable("gateway_id: a device cannot be its own gateway",
                                errors=[{"field": "gateway_id", "message": "self reference"}])
        found = db.scalar(select(Device.id).where(Device.id == gateway_id, Device.enterprise_id == enterprise_id,
                                                  Device.is_gateway.is_(True)))
        if found is None:
            raise Unprocessable(f"gateway_id: no gateway device {gateway_id} in your enterprise",
                                errors=[{"field": "gateway_id", "message": "unknown gateway"}])


def _device_name_free(db: Session, enterprise_id: int, name: str, exclude_id: int | None = None) -> None:
    stmt = select(Device.id).where(Device.enterprise_id == enterprise_id, Device.name == name)
    if exclude_id is not None:
        stmt = stmt.where(Device.id != exclude_id)
    if db.scalar(stmt) is not None:
        raise Conflict(f"A device named '{name}' already exists in your enterprise.")


def new_token() -> str:
    # 20 URL-safe characters, the length of ThingsBoard's generated access tokens.
    return secrets.token_urlsafe(15)


def _issue_token(device: Device) -> str:
    token = new_token()
    device.token_hash = _hash(token)
    device.token_prefix = token[:TOKEN_PREFIX_LENGTH]
    device.token_revoked = False
    return token


def create_device(db: Session, *, actor: Principal, data: DeviceIn, ip: str = "") -> tuple[Device, str]:
    """Creates the device with a fresh access token; returns both (the token is shown once)."""
    actor.require("devices:write")
    _device_name_free(db, actor.enterprise_id, data.name)
    _check_refs(db, enterprise_id=actor.enterprise_id, profile_id=data.profile_id,
                equipment_id=data.equipment_id, gateway_id=data.gateway_id)
    device = Device(enterprise_id=actor.enterprise_id, **data.model_dump())
    token = _issue_token(device)
    db.add(device)
    db.flush()
    audit.record(db, actor=actor, action="create", entity_type="device", entity_id=device.id,
                 after=_snapshot(device), enterprise_id=device.enterprise_id, ip=ip)
    return device, token


def update_device(db: Session, *, actor: Principal, device_id: int, data: DeviceUpdate, ip: str = "") -> Device:
    actor.require("devices:write")
    device = _owned_device(db, actor=actor, device_id=device_id)
    assert device.enterprise_id is not None
    before = _snapshot(device)
    changes = data.model_dump(exclude_unset=True)
    for key in ("name", "type", "label", "is_gateway"):
        if key in changes and changes[key] is None:
            raise Unprocessable(f"{key}: may not be null", errors=[{"field": key, "message": "may not be null"}])
    if changes.get("name"):
        _device_name_free(db, device.enterprise_id, changes["name"], exclude_id=device.id)
    _check_refs(db, enterprise_id=device.enterprise_id, profile_id=changes.get("profile_id"),
                equipment_id=changes.get("equipment_id"), gateway_id=changes.get("gateway_id"), device_id=device.id)
    for key, value in changes.items():
        setattr(device, key, value)
    db.flush()
    audit.record(db, actor=actor, action="update", entity_type="device", entity_id=device.id,
                 before=before, after=_snapshot(device), enterprise_id=device.enterprise_id, ip=ip)
    return device


def delete_device(db: Session, *, actor: Principal, device_id: int, ip: str = "") -> Device:
    """Deletes the device, its attributes and counters. Its stored telemetry is the telemetry
    store's (its delete_device): the API deletes it once this has committed."""
    device = get_device(db, actor=actor, device_id=device_id)
    actor.require("devices:write" if device.enterprise_id is not None else "devices:provision")
    before = _snapshot(device)
    db.delete(device)
    db.flush()
    audit.record(db, actor=actor, action="delete", entity_type="device", entity_id=device_id, before=before,
                 enterprise_id=before["enterprise_id"] or before["provisioned_by_enterprise_id"], ip=ip)
    return device


def rotate_token(db: Session, *, actor: Principal, device_id: int, ip: str = "") -> tuple[Device, str]:
    """A new access token; the previous one stops working as soon as this commits."""
    actor.require("devices:write")
    device = _owned_device(db, actor=actor, device_id=device_id)
    old_prefix = device.token_prefix
    token = _issue_token(device)
    db.flush()
    audit.record(db, actor=actor, action="rotate_token", entity_type="device", entity_id=device.id,
                 before={"token_prefix": old_prefix}, after={"token_prefix": device.token_prefix},
                 enterprise_id=device.enterprise_id, ip=ip)
    return device, token


def revoke_token(db: Session, *, actor: Principal, device_id: int, ip: str = "") -> Device:
    actor.require("devices:write")
    device = _owned_device(db, actor=actor, device_id=device_id)
    device.token_revoked = True
    db.flush()
    audit.record(db, actor=actor, action="revoke_token", entity_type="device", entity_id=device.id,
                 before={"token_revoked": False}, after={"token_revoked": True},
                 enterprise_id=device.enterprise_id, ip=ip)
    return device


# ---- provisioning and claiming ---------------------------------------------------------------


def new_claim_code() -> str:
    raw = "".join(secrets.choice(_CLAIM_ALPHABET) for _ in range(12))
    return f"{raw[:4]}-{raw[4:8]}-{raw[8:]}"


def _normalize_claim_code(code: str) -> str:
    return code.strip().upper().replace(" ", "").replace("-", "")


def provision_device(db: Session, *, actor: Principal, data: ProvisionIn, ip: str = "") -> tuple[Device, str]:
    """Pre-creates an unclaimed device with a claim code (returned once) for an enterprise to claim."""
    actor.require("devices:provision")
    code = new_claim_code()
    device = Device(enterprise_id=None, provisioned_by_enterprise_id=actor.enterprise_id, name=data.name,
                    type=data.type, label=data.label, is_gateway=data.is_gateway,
                    claim_code_hash=_hash(_normalize_claim_code(code)),
                    claim_expires_at=utcnow() + timedelta(hours=data.claim_valid_hours))
    db.add(device)
    db.flush()
    audit.record(db, actor=actor, action="provision", entity_type="device", entity_id=device.id,
                 after=_snapshot(device), enterprise_id=actor.enterprise_id, ip=ip)
    return device, code


def claim_device(db: Session, *, actor: Principal, claim_code: str, ip: str = "") -> tuple[Device, str]:
    """The claiming enterprise becomes the owner and gets a fresh access token; the code is spent.
    Unknown code: 404; already claimed: 409; expired: 410."""
    actor.require("devices:write")
    code_hash = _hash(_normalize_claim_code(claim_code))
    device = db.scalar(select(Device).where(Device.claim_code_hash == code_hash))
    if device is None:
        raise NotFound("device with this claim code", "(claim code)")
    if device.claimed_at is not None or device.enterprise_id is not None:
        raise Conflict("This claim code has already been used; each device can be claimed once.")
    if device.claim_expires_at is not None and device.claim_expires_at <= utcnow():
        raise Gone("This claim code has expired; ask the supplier for a new one.")
    _device_name_free(db, actor.enterprise_id, device.name)
    before = _snapshot(device)
    device.enterprise_id = actor.enterprise_id
    device.claimed_at = utcnow()
    device.profile_id = None  # a profile of the supplier's enterprise is not the owner's to use
    token = _issue_token(device)
    db.flush()
    audit.record(db, actor=actor, action="claim", entity_type="device", entity_id=device.id,
                 before=before, after=_snapshot(device), enterprise_id=actor.enterprise_id, ip=ip)
    return device, token


# ---- attributes -------------------------------------------------------------------------------


def list_attributes(db: Session, *, actor: Principal, device_id: int,
                    scope: AttributeScope | None = None) -> list[DeviceAttribute]:
    actor.require("devices:read")
    device = get_device(db, actor=actor, device_id=device_id)
    stmt = select(DeviceAttribute).where(DeviceAttribute.device_id == device.id)
    if scope is not None:
        stmt = stmt.where(DeviceAttribute.scope == scope)
    return list(db.scalars(stmt.order_by(DeviceAttribute.scope, DeviceAttribute.key)).all())


def set_attributes(db: Session, *, actor: Principal, device_id: int, scope: AttributeScope,
                   values: Mapping[str, Any], ip: str = "") -> Device:
    """Users set server and shared attributes; client attributes belong to the device."""
    actor.require("devices:write")
    if scope == AttributeScope.client:
        raise Unprocessable("scope: client attributes are reported by the device itself; "
                            "set server or shared attributes instead",
                            errors=[{"field": "scope", "message": "client scope is read-only"}])
    if not values:
        raise Unprocessable("body: give at least one attribute", errors=[{"field": "body", "message": "empty"}])
    for key in values:
        if not key or len(key) > 200:
            raise Unprocessable("body: attribute keys must be 1..200 characters",
                                errors=[{"field": "body", "message": "bad key"}])
    device = _owned_device(db, actor=actor, device_id=device_id)
    before = {a.key: a.value for a in db.scalars(select(DeviceAttribute).where(
        DeviceAttribute.device_id == device.id, DeviceAttribute.scope == scope,
        DeviceAttribute.key.in_(list(values)))).all()}
    upsert_attributes(db, device_id=device.id, scope=scope, values=values)
    audit.record(db, actor=actor, action="set_attributes", entity_type="device", entity_id=device.id,
                 before={"scope": scope.value, "values": before}, after={"scope": scope.value, "values": dict(values)},
                 enterprise_id=device.enterprise_id, ip=ip)
    return device


def delete_attributes(db: Session, *, actor: Principal, device_id: int, scope: AttributeScope,
                      keys: list[str], ip: str = "") -> int:
    actor.require("devices:write")
    device = _owned_device(db, actor=actor, device_id=device_id)
    if not keys:
        raise Unprocessable("keys: name the attributes to delete (comma-separated)",
                            errors=[{"field": "keys", "message": "required"}])
    rows = list(db.scalars(select(DeviceAttribute).where(DeviceAttribute.device_id == device.id,
                                                         DeviceAttribute.scope == scope,
                                                         DeviceAttribute.key.in_(keys))).all())
    for row in rows:
        db.delete(row)
    db.flush()
    audit.record(db, actor=actor, action="delete_attributes", entity_type="device", entity_id=device.id,
                 before={"scope": scope.value, "values": {r.key: r.value for r in rows}},
                 enterprise_id=device.enterprise_id, ip=ip)
    return len(rows)


# ---- errors -----------------------------------------------------------------------------------


def device_errors(db: Session, *, actor: Principal, device_id: int, recent_limit: int = 50
                  ) -> tuple[Device, list[DeviceReject], list[DeviceErrorLog]]:
    actor.require("devices:read")
    device = get_device(db, actor=actor, device_id=device_id)
    rejects = list(db.scalars(select(DeviceReject).where(DeviceReject.device_id == device.id)
                              .order_by(DeviceReject.count.desc(), DeviceReject.reason)).all())
    recent = list(db.scalars(select(DeviceErrorLog).where(DeviceErrorLog.device_id == device.id)
                             .order_by(DeviceErrorLog.id.desc()).limit(recent_limit)).all())
    return device, rejects, recent


def unknown_sender_rejects(db: Session, *, actor: Principal) -> list[DeviceReject]:
    """Rejects of messages whose token matched no device (platform-wide; admins only)."""
    if not actor.is_platform_admin:
        return []
    return list(db.scalars(select(DeviceReject).where(DeviceReject.device_id.is_(None))).all())

