"""The unit of telemetry every part of the platform passes around, and the store interface.

A Point is one value of one key of one device at one instant. Ingest turns every payload into
Points, the store keeps them, the rule engine evaluates them, and live pages receive them."""

from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, overload

Value = float | int | bool | str


class Point(NamedTuple):
    """A named tuple, not a dataclass: ingest makes hundreds of thousands a second, and a tuple
    is built in a fraction of a frozen dataclass's time (see `points_of`)."""

    device_id: int
    key: str
    ts: int  # milliseconds since the Unix epoch, UTC
    value: Value


_new_tuple = tuple.__new__


def points_of(device_id: int, ts: int, values: Mapping[str, Value]) -> list[Point]:
    """The Points of one device's values at one instant."""
    return [_new_tuple(Point, (device_id, key, ts, value)) for key, value in values.items()]


Frame = tuple[int, int, Mapping[str, Value]]  # (device_id, ts ms, {key: value})


class Frames(Sequence[Point]):
    """Points held the way devices send them: each frame is one device's values at one instant.

    Ingest's hot path (gateway batches: many keys per device and timestamp) passes these through
    the queue to the store without making a Point per value; the store and the live feed read
    the frames directly, and anything else iterates them as Points (made on the fly)."""

    __slots__ = ("_list", "_n", "frames")

    def __init__(self, frames: list[Frame]) -> None:
        self.frames = frames
        self._n = sum(map(len, map(_values_of, frames)))
        self._list: list[Point] | None = None

    @classmethod
    def join(cls, parts: Sequence[Frames]) -> Frames:
        if len(parts) == 1:
            return parts[0]
        return cls([f for part in parts for f in part.frames])

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[Point]:
        if self._list is not None:
            return iter(self._list)
        return (_new_tuple(Point, (d, k, ts, v)) for d, ts, values in self.frames for k, v in values.items())

    @overload
    def __getitem__(self, i: int) -> Point: ...
    @overload
    def __getitem__(self, i: slice) -> list[Point]: ...
    def __getitem__(self, i: int | slice) -> Point | list[Point]:
        if self._list is None:
            self._list = list(self)
        return self._list[i]

    def __repr__(self) -> str:
        return f"Frames({len(self.frames)} frames, {self._n} points)"


_values_of = operator.itemgetter(2)


def join_points(parts: Sequence[Sequence[Point]]) -> Sequence[Point]:
    """Several submissions' points as one sequence: frames stay frames when all parts are."""
    if len(parts) == 1:
        return parts[0]
    if all(type(p) is Frames for p in parts):
        return Frames.join(parts)  # type: ignore[arg-type]
    return [p for part in parts for p in part]


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
