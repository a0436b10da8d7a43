"""Pure parts of the store: interval/time parsing, rollup planning, merging partials."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecoplat.telemetry.query import (
    HOUR_MS,
    MINUTE_MS,
    RAW,
    decode,
    encode,
    merge_partials,
    parse_interval,
    parse_time,
    plan_segments,
)


def test_intervals_and_times_parse_or_say_why_not() -> None:
    assert [parse_interval(t) for t in ("30s", "1m", "15m", "1h", "1d", "1w", "2500")] == [
        30_000, 60_000, 900_000, 3_600_000, 86_400_000, 604_800_000, 2500]
    for bad in ("", "1y", "-5m", "0", "m"):
        with pytest.raises(ValueError):
            parse_interval(bad)
    assert parse_time("1764201600000") == 1764201600000
    assert parse_time("2025-11-27T08:00:00+08:00") == 1764201600000
    assert parse_time("2025-11-27T00:00:00Z") == parse_time("2025-11-27") == 1764201600000
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_time("tomorrow")


def test_a_range_is_answered_from_hours_then_minutes_then_raw_edges() -> None:
    start = 10 * HOUR_MS - 2 * MINUTE_MS - 500
    end = 13 * HOUR_MS + 3 * MINUTE_MS + 700
    assert plan_segments(start, end, HOUR_MS) == [
        (RAW, start, 10 * HOUR_MS - 2 * MINUTE_MS), (MINUTE_MS, 10 * HOUR_MS - 2 * MINUTE_MS, 10 * HOUR_MS),
        (HOUR_MS, 10 * HOUR_MS, 13 * HOUR_MS), (MINUTE_MS, 13 * HOUR_MS, 13 * HOUR_MS + 3 * MINUTE_MS),
        (RAW, 13 * HOUR_MS + 3 * MINUTE_MS, end)]
    # an interval that is not a whole number of minutes can only come from raw rows
    assert plan_segments(start, end, 45_000) == [(RAW, start, end)]
    assert plan_segments(5, 5, MINUTE_MS) == []


@given(st.integers(0, 10**13), st.integers(1, 10**9),
       st.sampled_from([1000, 45_000, MINUTE_MS, 15 * MINUTE_MS, HOUR_MS, 86_400_000]))
def test_planned_segments_tile_the_range_and_align_to_their_level(start: int, length: int, interval: int) -> None:
    segments = plan_segments(start, start + length, interval)
    assert segments[0][1] == start and segments[-1][2] == start + length
    for (_, _, e), (_, s, _) in zip(segments, segments[1:], strict=False):
        assert e == s
    for level, s, e in segments:
        assert s < e
        if level != RAW:
            assert s % level == 0 and e % level == 0 and interval % level == 0


def test_partials_of_one_bucket_merge_into_one() -> None:
    merged = merge_partials([(1, 0, 2, 10.0, 4.0, 6.0), (1, 0, 1, 1.0, 1.0, 1.0), (1, 60, 0, 0, 0, 0),
                             (2, 60, 1, 3.0, 3.0, 3.0)])
    assert [(b.ts, b.count, b.sum, b.min, b.max, b.avg) for b in merged[1]] == [(0, 3, 11.0, 1.0, 6.0, 11 / 3)]
    assert merged[2][0].avg == 3.0


def test_values_encode_so_that_types_survive() -> None:
    for value in (1.5, True, False, "on", {"a": 1}, [1, "x"]):
        assert decode(*encode(value)) == value and type(decode(*encode(value))) is type(value)
    assert decode(*encode(7)) == 7.0
