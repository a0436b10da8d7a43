"""The tenancy tree (ISA-95 names): ecosystem ─ enterprise ─ site ─ area ─ line ─ workstation,
equipment; users, API keys and the audit trail."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ecoplat.db import Base, JSONType, UTCDateTime, utcnow


class SizeClass(enum.StrEnum):
    large = "large"
    medium = "medium"
    small = "small"
    micro = "micro"


class MembershipRole(enum.StrEnum):
    co_builder = "co_builder"
    member = "member"


class Role(enum.StrEnum):
    platform_admin = "platform_admin"
    ecosystem_steward = "ecosystem_steward"
    enterprise_admin = "enterprise_admin"
    engineer = "engineer"
    safety_officer = "safety_officer"
    operator = "operator"
    customer = "customer"


def _enum(e: type[enum.Enum], name: str) -> Enum:
    # Stored as plain strings with a CHECK, so adding a value is a small migration.
    return Enum(e, name=name, native_enum=False, create_constraint=True, length=32,
                values_callable=lambda x: [m.value for m in x])


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow, nullable=False)


class Ecosystem(TimestampMixin, Base):
    __tablename__ = "ecosystems"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name_en: Mapped[str] = mapped_column(String(200))
    name_zh: Mapped[str] = mapped_column(String(200))
    industry: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")

    memberships: Mapped[list[EcosystemMembership]] = relationship(back_populates="ecosystem", lazy="raise")


class Enterprise(TimestampMixin, Base):
    __tablename__ = "enterprises"
    __table_args__ = (
        Index("ix_enterprises_name_id", "name", "id"),
        Index("ix_enterprises_country_id", "country", "id"),
        Index("ix_enterprises_size_class_id", "size_class", "id"),
        Index("ix_enterprises_isic_class_id", "isic_class", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    country: Mapped[str] = mapped_column(String(2))  # ISO 3166-1 alpha-2
    isic_class: Mapped[str] = mapped_column(String(4))  # ISIC Rev.4 class, 4 digits
    size_class: Mapped[SizeClass] = mapped_column(_enum(SizeClass, "size_class"))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    # Tenant limits also answered to ThingsBoard gateways (getSessionLimits).
    limits: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)

    memberships: Mapped[list[EcosystemMembership]] = relationship(back_populates="enterprise", lazy="raise")


class EcosystemMembership(TimestampMixin, Base):
    __tablename__ = "ecosystem_memberships"
    __table_args__ = (UniqueConstraint("ecosystem_id", "enterprise_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ecosystem_id: Mapped[int] = mapped_column(ForeignKey("ecosystems.id", ondelete="CASCADE"), index=True)
    enterprise_id: Mapped[int] = mapped_column(ForeignKey("enterprises.id", ondelete="CASCADE"), index=True)
    role: Mapped[MembershipRole] = mapped_column(_enum(MembershipRole, "membership_role"))

    ecosystem: Mapped[Ecosystem] = relationship(back_populates="memberships", lazy="raise")
    enterprise: Mapped[Enterprise] = relationship(back_populates="memberships", lazy="raise")


class Site(TimestampMixin, Base):
    __tablename__ = "sites"
    __table_args__ = (Index("ix_sites_enterprise_id_id", "enterprise_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    enterprise_id: Mapped[int] = mapped_column(ForeignKey("enterprises.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    code: Mapped[str] = mapped_column(String(64), default="")
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    address: Mapped[str] = mapped_column(String(400), default="")
    latitude: Mapped[float | None] = mapped_column(Float, nullable=True)
    longitude: Mapped[float | None] = mapped_column(Float, nullable=True)


class Area(TimestampMixin, Base):
    __tablename__ = "areas"
    __table_args__ = (Index("ix_areas_enterprise_id_id", "enterprise_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    enterprise_id: Mapped[int] = mapped_column(ForeignKey("enterprises.id", ondelete="CASCADE"))
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    code: Mapped[str] = mapped_column(String(64), default="")


class Line(TimestampMixin, Base):
    __tablename__ = "lines"
    __table_args__ = (Index("ix_lines_enterprise_id_id", "enterprise_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    enterprise_id: Mapped[int] = mapped_column(ForeignKey("enterprises.id", ondelete="CASCADE"))
    area_id: Mapped[int] = mapped_column(ForeignKey("areas.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    code: Mapped[str] = mapped_column(String(64), default="")


class Workstation(TimestampMixin, Base):
    __tablename__ = "workstations"
    __table_args__ = (Index("ix_workstations_enterprise_id_id", "enterprise_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    enterprise_id: Mapped[int] = mapped_column(ForeignKey("enterprises.id", ondelete="CASCADE"))
    line_id: Mapped[int] = mapped_column(ForeignKey("lines.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    code: Mapped[str] = mapped_column(String(64), default="")
    position: Mapped[int] = mapped_column(Integer, default=0)


class Equipment(TimestampMixin, Base):
    __tablename__ = "equipment"
    __table_args__ = (
        Index("ix_equipment_enterprise_id_id", "enterprise_id", "id"),
        Index("ix_equipment_enterprise_id_equipment_type_iri_id", "enterprise_id", "equipment_type_iri", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    enterprise_id: Mapped[int] = mapped_column(ForeignKey("enterprises.id", ondelete="CASCADE"))
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), index=True)
    area_id: Mapped[int | None] = mapped_column(ForeignKey("areas.id", ondelete="SET NULL"), nullable=True, index=True)
    line_id: Mapped[int | None] = mapped_column(ForeignKey("lines.id", ondelete="SET NULL"), nullable=True, index=True)
    workstation_id: Mapped[int | None] = mapped_column(
        ForeignKey("workstations.id", ondelete="SET NULL"), nullable=True, index=True)
    name: Mapped[str] = mapped_column(String(200))
    tag: Mapped[str] = mapped_column(String(64), default="")  # the plant's tag number, e.g. E-101
    equipment_type_iri: Mapped[str] = mapped_column(String(500), default="")
    manufacturer: Mapped[str] = mapped_column(String(200), default="")
    model: Mapped[str] = mapped_column(String(200), default="")
    serial_number: Mapped[str] = mapped_column(String(200), default="")


class User(TimestampMixin, Base):
    __tablename__ = "users"
    __table_args__ = (Index("ix_users_enterprise_id_id", "enterprise_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    enterprise_id: Mapped[int] = mapped_column(ForeignKey("enterprises.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(320), unique=True)
    full_name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str] = mapped_column(String(200))
    roles: Mapped[list[str]] = mapped_column(JSONType, default=list)
    locale: Mapped[str] = mapped_column(String(10), default="en")
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Bumped to revoke every refresh token issued so far (password change, deactivation).
    token_version: Mapped[int] = mapped_column(Integer, default=0)
    failed_login_count: Mapped[int] = mapped_column(Integer, default=0)
    last_failed_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ApiKey(TimestampMixin, Base):
    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_enterprise_id_id", "enterprise_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    enterprise_id: Mapped[int] = mapped_column(ForeignKey("enterprises.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))  # shown to people to tell keys apart
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of the secret
    roles: Mapped[list[str]] = mapped_column(JSONType, default=list)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class AuditEvent(Base):
    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_enterprise_id_id", "enterprise_id", "id"),
        Index("ix_audit_events_entity", "entity_type", "entity_id"),
        # The audit log's filters, newest first within one enterprise (keyset on id).
        Index("ix_audit_events_enterprise_id_action_id", "enterprise_id", "action", "id"),
        Index("ix_audit_events_enterprise_id_entity_type_id", "enterprise_id", "entity_type", "id"),
        Index("ix_audit_events_enterprise_id_actor_id", "enterprise_id", "actor", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    enterprise_id: Mapped[int | None] = mapped_column(
        ForeignKey("enterprises.id", ondelete="CASCADE"), nullable=True)
    actor_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    actor: Mapped[str] = mapped_column(String(320))  # email or "api-key:<prefix>" or "system"
    action: Mapped[str] = mapped_column(String(32))  # create, update, delete, login, …
    entity_type: Mapped[str] = mapped_column(String(64))
    entity_id: Mapped[str] = mapped_column(String(64))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    ip: Mapped[str] = mapped_column(String(64), default="")
