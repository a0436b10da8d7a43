"""Alarm tables: rules, alarms with their ISA-18.2 transitions and comments, notification
channels, the notification outbox and in-app notifications.

Devices and profiles belong to the connect domain; they are referred to by id only (domains talk
through services, not each other's tables), and an alarm outlives the device it was raised on so
the alarm history and the KPIs stay whole."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ecoplat.db import Base, JSONType, UTCDateTime, utcnow


class _Timestamps:
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow, nullable=False)


class AlarmRule(_Timestamps, Base):
    __tablename__ = "alarm_rules"
    __table_args__ = (
        Index("ix_alarm_rules_enterprise_id_id", "enterprise_id", "id"),
        Index("ix_alarm_rules_device_id", "device_id"),
        Index("ix_alarm_rules_profile_id", "profile_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    enterprise_id: Mapped[int] = mapped_column(ForeignKey("enterprises.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200), default="")
    device_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    profile_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    key: Mapped[str] = mapped_column(String(200), default="")
    kind: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    priority: Mapped[int] = mapped_column(Integer, default=3)  # 1 highest … 4 lowest
    deadband: Mapped[float] = mapped_column(Float, default=0.0)
    on_delay_s: Mapped[float] = mapped_column(Float, default=0.0)
    off_delay_s: Mapped[float] = mapped_column(Float, default=0.0)
    message_template: Mapped[str] = mapped_column(String(500), default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)


class Alarm(_Timestamps, Base):
    """One alarm of one rule on one device, from its first annunciation until it is back to
    normal; re-triggers while open update it (count, last_triggered_at, value)."""

    __tablename__ = "alarms"
    __table_args__ = (
        Index("ix_alarms_enterprise_id_id", "enterprise_id", "id"),
        Index("ix_alarms_enterprise_id_state", "enterprise_id", "state"),
        Index("ix_alarms_enterprise_id_first_triggered_at", "enterprise_id", "first_triggered_at"),
        Index("ix_alarms_rule_id_device_id_closed_at", "rule_id", "device_id", "closed_at"),
        Index("ix_alarms_device_id", "device_id"),
        Index("ix_alarms_state_shelved_until", "state", "shelved_until"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    enterprise_id: Mapped[int] = mapped_column(ForeignKey("enterprises.id", ondelete="CASCADE"))
    rule_id: Mapped[int | None] = mapped_column(ForeignKey("alarm_rules.id", ondelete="SET NULL"), nullable=True)
    device_id: Mapped[int] = mapped_column(Integer)
    site_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    key: Mapped[str] = mapped_column(String(200), default="")
    kind: Mapped[str] = mapped_column(String(32), default="")
    state: Mapped[str] = mapped_column(String(32))
    active: Mapped[bool] = mapped_column(Boolean, default=True)  # the alarm condition
    acked: Mapped[bool] = mapped_column(Boolean, default=False)
    priority: Mapped[int] = mapped_column(Integer, default=3)
    message: Mapped[str] = mapped_column(String(1000), default="")
    value: Mapped[Any] = mapped_column(JSONType, nullable=True)
    limit: Mapped[float | None] = mapped_column(Float, nullable=True)
    count: Mapped[int] = mapped_column(Integer, default=1)
    first_triggered_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_triggered_at: Mapped[datetime] = mapped_column(UTCDateTime())
    cleared_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    acked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    acked_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    shelved_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    shelved_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    shelve_reason: Mapped[str] = mapped_column(String(500), default="")
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)  # back to normal


class AlarmTransition(Base):
    __tablename__ = "alarm_transitions"
    __table_args__ = (
        Index("ix_alarm_transitions_alarm_id_id", "alarm_id", "id"),
        Index("ix_alarm_transitions_enterprise_id_at", "enterprise_id", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alarm_id: Mapped[int] = mapped_column(ForeignKey("alarms.id", ondelete="CASCADE"))
    enterprise_id: Mapped[int] = mapped_column(ForeignKey("enterprises.id", ondelete="CASCADE"))
    action: Mapped[str] = mapped_column(String(32))
    from_state: Mapped[str] = mapped_column(String(32))
    to_state: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    note: Mapped[str] = mapped_column(String(1000), default="")
    value: Mapped[Any] = mapped_column(JSONType, nullable=True)


class AlarmComment(Base):
    __tablename__ = "alarm_comments"
    __table_args__ = (Index("ix_alarm_comments_alarm_id_id", "alarm_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alarm_id: Mapped[int] = mapped_column(ForeignKey("alarms.id", ondelete="CASCADE"))
    enterprise_id: Mapped[int] = mapped_column(ForeignKey("enterprises.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    text: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class NotificationChannel(_Timestamps, Base):
    __tablename__ = "notification_channels"
    __table_args__ = (Index("ix_notification_channels_enterprise_id_id", "enterprise_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    enterprise_id: Mapped[int] = mapped_column(ForeignKey("enterprises.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))  # webhook, email, in_app
    # webhook: url, secret; email: to (list), smtp_host, smtp_port, smtp_user, smtp_password,
    # smtp_starttls, from_address
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    max_priority: Mapped[int] = mapped_column(Integer, default=4)  # notify priorities 1..max_priority
    # Which transitions are sent: by default new annunciations and returns to normal.
    actions: Mapped[list[str]] = mapped_column(JSONType, default=lambda: ["alarm", "return_to_normal"])
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)


class OutboxMessage(Base):
    """A notification to deliver, written in the same transaction as the alarm transition that
    caused it (transactional outbox), so none is lost and none is sent for a rolled-back one."""

    __tablename__ = "notification_outbox"
    __table_args__ = (
        Index("ix_notification_outbox_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_notification_outbox_enterprise_id_id", "enterprise_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    enterprise_id: Mapped[int] = mapped_column(ForeignKey("enterprises.id", ondelete="CASCADE"))
    channel_id: Mapped[int] = mapped_column(ForeignKey("notification_channels.id", ondelete="CASCADE"))
    alarm_id: Mapped[int | None] = mapped_column(ForeignKey("alarms.id", ondelete="SET NULL"), nullable=True)
    event: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending, sent, dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_error: Mapped[str] = mapped_column(String(1000), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class InAppNotification(Base):
    __tablename__ = "in_app_notifications"
    __table_args__ = (Index("ix_in_app_notifications_enterprise_id_id", "enterprise_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    enterprise_id: Mapped[int] = mapped_column(ForeignKey("enterprises.id", ondelete="CASCADE"))
    channel_id: Mapped[int | None] = mapped_column(
        ForeignKey("notification_channels.id", ondelete="SET NULL"), nullable=True)
    alarm_id: Mapped[int | None] = mapped_column(ForeignKey("alarms.id", ondelete="SET NULL"), nullable=True)
    priority: Mapped[int] = mapped_column(Integer, default=3)
    title: Mapped[str] = mapped_column(String(300))
    body: Mapped[str] = mapped_column(String(1000), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
