"""One row per connector a tenant configured: which device it feeds, its type (an
`ecoplat.connectors` entry point), its validated configuration, and the last known status."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ecoplat.db import Base, JSONType, UTCDateTime, utcnow


class ConnectorConfig(Base):
    __tablename__ = "connector_configs"
    __table_args__ = (
        UniqueConstraint("enterprise_id", "name"),
        Index("ix_connector_configs_enterprise_id_id", "enterprise_id", "id"),
        Index("ix_connector_configs_device_id", "device_id"),
        # The runtime starts every enabled connector of every tenant at start-up.
        Index("ix_connector_configs_enabled_id", "enabled", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    enterprise_id: Mapped[int] = mapped_column(ForeignKey("enterprises.id", ondelete="CASCADE"))
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # Written by the runtime when the state changes: stopped, starting, online, unavailable.
    status: Mapped[str] = mapped_column(String(16), default="stopped")
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_error_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Bumped on every change a running connector must follow (configuration, device, enabled);
    # runtimes compare it with what they run and restart on a difference.
    config_version: Mapped[int] = mapped_column(Integer, default=1)
    # Which platform process runs the connector, until when: with several processes each
    # connector runs in exactly one; a crashed owner's lease runs out and another takes over.
    owner: Mapped[str | None] = mapped_column(String(120), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
