"""The telemetry store's tables.

A series is one key of one device; raw points, latest values and rollups refer to it by a small
integer id, so a raw row is only (series_id, ts, v_num, v_str). The tables are clustered on
(series_id, ts): on SQLite they are WITHOUT ROWID tables, on PostgreSQL the raw table is range-
partitioned by ts (partitions are created on demand by the store, see telemetry/postgres.py).

Numbers go in v_num (REAL / double precision) so aggregates run on them; booleans, strings and
JSON values go JSON-encoded in v_str, so a value reads back with its type.

No foreign keys point from these tables to devices or enterprises: the raw write path must not
pay for a constraint check per point, and a store may live in its own database."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ecoplat.db import Base, UTCDateTime, utcnow


class TelemetrySeries(Base):
    __tablename__ = "telemetry_series"
    __table_args__ = (
        UniqueConstraint("device_id", "key"),
        Index("ix_telemetry_series_enterprise_id", "enterprise_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    enterprise_id: Mapped[int] = mapped_column(Integer)
    device_id: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(255))


class TelemetryRaw(Base):
    __tablename__ = "telemetry_raw"
    __table_args__ = {"sqlite_with_rowid": False, "postgresql_partition_by": "RANGE (ts)"}

    series_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    ts: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)  # ms, UTC
    v_num: Mapped[float | None] = mapped_column(Float, nullable=True)
    v_str: Mapped[str | None] = mapped_column(Text, nullable=True)


class TelemetryLatest(Base):
    __tablename__ = "telemetry_latest"
    __table_args__ = {"sqlite_with_rowid": False}

    series_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    ts: Mapped[int] = mapped_column(BigInteger)
    v_num: Mapped[float | None] = mapped_column(Float, nullable=True)
    v_str: Mapped[str | None] = mapped_column(Text, nullable=True)


class TelemetryAgg1m(Base):
    """Numeric values folded per series and minute (sum, count, min, max), kept per batch."""

    __tablename__ = "telemetry_agg_1m"
    __table_args__ = {"sqlite_with_rowid": False}

    series_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    bucket_ts: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    count: Mapped[int] = mapped_column(BigInteger)
    sum: Mapped[float] = mapped_column(Float)
    min: Mapped[float] = mapped_column(Float)
    max: Mapped[float] = mapped_column(Float)


class TelemetryAgg1h(Base):
    """The same per hour; kept after raw data and minute rollups expire, for long-range charts."""

    __tablename__ = "telemetry_agg_1h"
    __table_args__ = {"sqlite_with_rowid": False}

    series_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    bucket_ts: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    count: Mapped[int] = mapped_column(BigInteger)
    sum: Mapped[float] = mapped_column(Float)
    min: Mapped[float] = mapped_column(Float)
    max: Mapped[float] = mapped_column(Float)


class TelemetryRetention(Base):
    """How many days of raw telemetry an enterprise keeps (no row: kept forever)."""

    __tablename__ = "telemetry_retention"

    enterprise_id: Mapped[int] = mapped_column(
        ForeignKey("enterprises.id", ondelete="CASCADE"), primary_key=True, autoincrement=False)
    days: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
