"""Devices, device profiles, attributes and reject counters (the connect domain's tables).

A device belongs to one enterprise, or to none while it is pre-provisioned and waiting to be
claimed. Its access token is stored only as a sha256 hash (looked up on every MQTT connect and
HTTP call) plus a short prefix shown to people to tell tokens apart."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from ecoplat.db import Base, JSONType, UTCDateTime, utcnow


class TelemetryDataType(enum.StrEnum):
    number = "number"
    integer = "integer"
    boolean = "boolean"
    string = "string"
    json = "json"


class ChartKind(enum.StrEnum):
    line = "line"
    bar = "bar"
    gauge = "gauge"


class AttributeScope(enum.StrEnum):
    # ThingsBoard's three scopes: client attributes are reported by the device, server
    # attributes are set by users and stay on the platform, shared ones are pushed to the device.
    client = "client"
    server = "server"
    shared = "shared"


def _enum(e: type[enum.Enum], name: str) -> Enum:
    return Enum(e, name=name, native_enum=False, create_constraint=True, length=16,
                values_callable=lambda x: [m.value for m in x])


class DeviceProfile(Base):
    __tablename__ = "device_profiles"
    __table_args__ = (
        UniqueConstraint("enterprise_id", "name"),
        Index("ix_device_profiles_enterprise_id_id", "enterprise_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    enterprise_id: Mapped[int] = mapped_column(ForeignKey("enterprises.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    # [{"key", "data_type", "unit" (UCUM), "min", "max", "chart", "description"}]
    telemetry_keys: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    inactivity_timeout_s: Mapped[int] = mapped_column(Integer, default=600)
    # Alarm rule templates the alarm engine instantiates for devices of this profile.
    default_rules: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    # IRI of the knowledge-graph equipment type this profile was instantiated from, if any.
    source_iri: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class Device(Base):
    __tablename__ = "devices"
    __table_args__ = (
        # NULL enterprise (unclaimed) never collides: NULLs are distinct on both backends.
        UniqueConstraint("enterprise_id", "name"),
        Index("ix_devices_enterprise_id_id", "enterprise_id", "id"),
        Index("ix_devices_enterprise_id_profile_id_id", "enterprise_id", "profile_id", "id"),
        Index("ix_devices_enterprise_id_equipment_id_id", "enterprise_id", "equipment_id", "id"),
        Index("ix_devices_gateway_id_name", "gateway_id", "name"),
        Index("ix_devices_provisioned_by_id", "provisioned_by_enterprise_id", "id"),
        # Ids key telemetry and alarms: a deleted device's id is never reused (SQLite would).
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    enterprise_id: Mapped[int | None] = mapped_column(
        ForeignKey("enterprises.id", ondelete="CASCADE"), nullable=True)
    profile_id: Mapped[int | None] = mapped_column(
        ForeignKey("device_profiles.id", ondelete="SET NULL"), nullable=True)
    equipment_id: Mapped[int | None] = mapped_column(
        ForeignKey("equipment.id", ondelete="SET NULL"), nullable=True)
    name: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(100), default="default")
    label: Mapped[str] = mapped_column(String(200), default="")
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    token_prefix: Mapped[str] = mapped_column(String(16), default="")
    token_revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    is_gateway: Mapped[bool] = mapped_column(Boolean, default=False)
    gateway_id: Mapped[int | None] = mapped_column(
        ForeignKey("devices.id", ondelete="SET NULL"), nullable=True)
    claim_code_hash: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    claim_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    provisioned_by_enterprise_id: Mapped[int | None] = mapped_column(
        ForeignKey("enterprises.id", ondelete="SET NULL"), nullable=True)
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_activity: Mapped[str] = mapped_column(String(32), default="")
    messages_total: Mapped[int] = mapped_column(BigInteger, default=0)
    points_total: Mapped[int] = mapped_column(BigInteger, default=0)
    errors_total: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class DeviceAttribute(Base):
    __tablename__ = "device_attributes"
    __table_args__ = (UniqueConstraint("device_id", "scope", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    scope: Mapped[AttributeScope] = mapped_column(_enum(AttributeScope, "attribute_scope"))
    key: Mapped[str] = mapped_column(String(200))
    value: Mapped[Any] = mapped_column(JSONType, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class DeviceReject(Base):
    """Rejected input counted per device and reason; device_id is NULL for unknown tokens."""

    __tablename__ = "device_rejects"
    __table_args__ = (
        UniqueConstraint("device_id", "reason"),
        Index("ix_device_rejects_enterprise_id", "enterprise_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int | None] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), nullable=True)
    enterprise_id: Mapped[int | None] = mapped_column(
        ForeignKey("enterprises.id", ondelete="CASCADE"), nullable=True)
    reason: Mapped[str] = mapped_column(String(32))
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    last_detail: Mapped[str] = mapped_column(Text, default="")
    last_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DeviceErrorLog(Base):
    """The most recent rejects per device, bounded (older rows are pruned when counters flush)."""

    __tablename__ = "device_error_log"
    __table_args__ = (Index("ix_device_error_log_device_id_id", "device_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int | None] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), nullable=True)
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
