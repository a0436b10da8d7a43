"""Pydantic in/out models of the telemetry API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class SampleOut(BaseModel):
    ts: int = Field(description="Milliseconds since the Unix epoch, UTC.")
    value: Any = Field(description="Number, boolean, string or JSON value as the device sent it; "
                                   "for aggregates, the aggregate (null when undefined).")


class RetentionIn(BaseModel):
    days: int | None = Field(default=None, ge=1, le=36_500,
                             description="Days of raw telemetry to keep; null keeps it forever.")


class RetentionOut(BaseModel):
    enterprise_id: int
    days: int | None
    updated_at: datetime | None = None
