"""The unit of telemetry every part of the platform passes around, and the store interface.

A Point is one value of one key of one device at one instant. Ingest turns every payload into
Points, the store keeps them, the rule engine evaluates them, and live pages receive them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

Value = float | int | bool | str


@dataclass(slots=True, frozen=True)
class Point:
    device_id: int
    key: str
    ts: int  # milliseconds since the Unix epoch, UTC
    value: Value


@dataclass(slots=True, frozen=True)
class Sample:
    ts: int
    value: Value


@dataclass(slots=True, frozen=True)
class Bucket:
    ts: int  # start of the interval, ms
    avg: float | None
    min: float | None
    max: float | None
    count: int
    sum: float | None = None  # added for agg=sum; None when count is 0


class TelemetryStore(Protocol):
    """One interface, several backends (SQLite embedded, PostgreSQL scaled out).

    write() returns only when the points are durable: ingest acknowledges QoS 1 after it.
    Writing the same (device, key, ts) twice keeps one row (the last value): replays after a
    crash never store a point twice."""

    def write(self, points: Sequence[Point], enterprise_of: Mapping[int, int]) -> None: ...

    def latest(self, device_id: int, keys: Sequence[str] | None = None) -> dict[str, Sample]: ...

    def range(self, device_id: int, keys: Sequence[str], start_ms: int, end_ms: int,
              limit: int = 10_000) -> dict[str, list[Sample]]: ...

    def aggregate(self, device_id: int, keys: Sequence[str], start_ms: int, end_ms: int,
                  interval_ms: int) -> dict[str, list[Bucket]]: ...

    def keys(self, device_id: int) -> list[str]: ...

    def apply_retention(self, enterprise_id: int, older_than_ms: int) -> int: ...

    def close(self) -> None: ...
