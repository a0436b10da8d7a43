"""Pure computation for the telemetry store and its API: value encoding, time and interval
parsing, planning which rollup answers which part of a range, and merging partial aggregates.
No I/O here, so all of it is tested without a database."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime

import orjson

from ecoplat.telemetry.points import Bucket, Value

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
# Rollup levels from coarsest to finest; 0 means the raw table.
LEVELS = (HOUR_MS, MINUTE_MS)
RAW = 0

AGGS = ("avg", "min", "max", "count", "sum")


def encode(value: object) -> tuple[float | None, str | None]:
    """(v_num, v_str): numbers in v_num so the database aggregates them; everything else
    JSON-encoded in v_str so it reads back with its type (a bool stays a bool)."""
    if isinstance(value, bool):
        return None, "true" if value else "false"
    if isinstance(value, int | float):
        number = float(value)
        if number - number != 0:
            # NaN or ±Infinity would poison every aggregate of its bucket: kept, but as text.
            return None, orjson.dumps(repr(number)).decode()
        return number, None
    return None, orjson.dumps(value).decode()


def decode(v_num: float | None, v_str: str | None) -> Value:
    if v_num is not None:
        return v_num
    if v_str is None:
        return None  # type: ignore[return-value]
    return orjson.loads(v_str)


_INTERVAL = re.compile(r"^\s*(\d+)\s*(ms|s|m|min|h|d|w)?\s*$", re.IGNORECASE)
_UNIT_MS = {"ms": 1, "s": 1000, "m": MINUTE_MS, "min": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS,
            "w": 7 * DAY_MS}


def parse_interval(text: str) -> int:
    """'15m', '1h', '1d', '30s' or a number of milliseconds -> milliseconds (ValueError if not)."""
    m = _INTERVAL.match(text)
    if not m:
        raise ValueError(f"'{text}' is not an interval; use e.g. 30s, 1m, 15m, 1h, 1d or milliseconds")
    ms = int(m.group(1)) * _UNIT_MS[(m.group(2) or "ms").lower()]
    if ms <= 0:
        raise ValueError("the interval must be longer than zero")
    return ms


def parse_time(text: str) -> int:
    """Milliseconds since the epoch, or an ISO 8601 date/time (UTC when no offset is given)."""
    text = text.strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"'{text}' is neither milliseconds since the epoch nor an ISO 8601 time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def floor_to(ts: int, step: int) -> int:
    return ts - ts % step


def ceil_to(ts: int, step: int) -> int:
    return -((-ts) // step) * step


def plan_segments(start_ms: int, end_ms: int, interval_ms: int,
                  levels: tuple[int, ...] = LEVELS) -> list[tuple[int, int, int]]:
    """Splits [start, end) into (level, start, end) pieces: the aligned middle from the coarsest
    rollup that divides the interval, the ragged edges from finer rollups and finally raw rows.
    A rollup row never straddles an output bucket because its level divides the interval."""
    if start_ms >= end_ms:
        return []
    for i, level in enumerate(levels):
        if interval_ms % level:
            continue
        a, b = ceil_to(start_ms, level), floor_to(end_ms, level)
        if a >= b:
            continue
        finer = levels[i + 1:]
        return (plan_segments(start_ms, a, interval_ms, finer) + [(level, a, b)]
                + plan_segments(b, end_ms, interval_ms, finer))
    return [(RAW, start_ms, end_ms)]


Partial = tuple[int, int, int, float, float, float]  # series_id, bucket_ts, count, sum, min, max


def merge_partials(rows: Iterable[Partial]) -> dict[int, list[Bucket]]:
    """Combines partial aggregates of the same (series, bucket) from different sources."""
    acc: dict[tuple[int, int], list[float]] = {}
    for sid, b, count, total, lo, hi in rows:
        if not count:
            continue
        # PostgreSQL's sum() over bigint counts is numeric: bring everything back to int/float.
        count, total, lo, hi = int(count), float(total), float(lo), float(hi)
        a = acc.get((sid, b))
        if a is None:
            acc[(sid, b)] = [count, total, lo, hi]
        else:
            a[0] += count
            a[1] += total
            a[2] = min(a[2], lo)
            a[3] = max(a[3], hi)
    out: dict[int, list[Bucket]] = {}
    for (sid, b), (count, total, lo, hi) in sorted(acc.items()):
        out.setdefault(sid, []).append(
            Bucket(ts=b, avg=total / count, min=lo, max=hi, count=int(count), sum=total))
    return out


def bucket_value(bucket: Bucket, agg: str) -> float | int | None:
    if agg == "count":
        return bucket.count
    if agg == "sum":
        return bucket.sum
    return getattr(bucket, agg)


def add_sample(acc: dict[tuple[int, int], list[float]], key: tuple[int, int], v: float) -> None:
    """Adds one value to a rollup accumulator: key (series_id, bucket) -> [count, sum, min, max]."""
    a = acc.get(key)
    if a is None:
        acc[key] = [1, v, v, v]
    else:
        a[0] += 1
        a[1] += v
        if v < a[2]:
            a[2] = v
        if v > a[3]:
            a[3] = v


def fold(rows: Iterable[tuple[int, int, float | None, str | None]], step: int
         ) -> dict[tuple[int, int], list[float]]:
    """Brute-force rollup of (series_id, ts, v_num, v_str) rows: the reference the incremental
    rollups are checked against."""
    acc: dict[tuple[int, int], list[float]] = {}
    for sid, ts, v, _ in rows:
        if v is not None:
            add_sample(acc, (sid, ts - ts % step), v)
    return acc
