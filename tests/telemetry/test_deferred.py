"""SQLite: the writer process folds rollups and latest values in memory between flushes.
Reads still see every write at once, the file records from when sums are owed, and a writer
killed with sums in memory leaves nothing wrong: the next writer rebuilds them from raw rows."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecoplat.telemetry.points import Frames, Point, Sample
from ecoplat.telemetry.query import HOUR_MS, MINUTE_MS
from ecoplat.telemetry.sqlite import SqliteTelemetryStore, telemetry_path
from ecoplat.telemetry.writer import ProcessWriteStore

from .builders import T0, open_process_store, process_gone

DEV, ENT = 41, 7


def _file(sqlite_url: str) -> str:
    return telemetry_path(sqlite_url.removeprefix("sqlite:///"))


def _on_disk(sqlite_url: str) -> dict[str, object]:
    """What the file itself holds (another connection, as after a crash)."""
    with sqlite3.connect(_file(sqlite_url)) as conn:
        return {
            "owed_from_minute": conn.execute("PRAGMA user_version").fetchone()[0],
            "1m": conn.execute("SELECT bucket_ts, count, sum, min, max FROM telemetry_agg_1m "
                               "ORDER BY bucket_ts").fetchall(),
            "1h": conn.execute("SELECT bucket_ts, count, sum, min, max FROM telemetry_agg_1h "
                               "ORDER BY bucket_ts").fetchall(),
            "latest": conn.execute("SELECT ts, v_num, v_str FROM telemetry_latest").fetchall(),
        }


def _now_minute() -> int:
    """The start of the current minute. Points from there on stay within the deferral window
    even if the minute ends while the test runs (points are in the future by under a minute)."""
    now = int(time.time() * 1000)
    return now - now % MINUTE_MS


def _minute(ts: int) -> int:
    return ts - ts % MINUTE_MS


def _recent_frames(start: int, n: int) -> Frames:
    """n samples a second apart from start, with a text key beside the number."""
    return Frames([(DEV, start + i * 1000, {"current_ka": 10.0 + i, "mode": f"m{i}"}) for i in range(n)])


def _expected_rollups(start: int, n: int) -> tuple[list[tuple], list[tuple]]:
    minutes: dict[int, list[float]] = {}
    for i in range(n):
        ts = start + i * 1000
        minutes.setdefault(ts - ts % MINUTE_MS, []).append(10.0 + i)
    one_m = [(b, len(v), sum(v), min(v), max(v)) for b, v in sorted(minutes.items())]
    hours: dict[int, list[float]] = {}
    for b, v in minutes.items():
        hours.setdefault(b - b % HOUR_MS, []).extend(v)
    one_h = [(b, len(v), sum(v), min(v), max(v)) for b, v in sorted(hours.items())]
    return one_m, one_h


@pytest.fixture
def deferring(sqlite_url: str) -> Iterator[SqliteTelemetryStore]:
    s = SqliteTelemetryStore(_file(sqlite_url), defer=True)
    yield s
    s.close()


def test_recent_points_are_folded_later_but_reads_see_them_at_once(sqlite_url: str,
                                                                   deferring: SqliteTelemetryStore) -> None:
    assert deferring.defer
    start = _now_minute()
    deferring.write(_recent_frames(start, 20), {DEV: ENT})
    # Raw rows are in the file; the sums are owed, and the file says from which minute.
    disk = _on_disk(sqlite_url)
    assert disk["1m"] == [] and disk["latest"] == []
    assert disk["owed_from_minute"] > 0
    assert disk["owed_from_minute"] * MINUTE_MS <= start
    assert len(deferring.range(DEV, ["current_ka"], start, start + 20_000)["current_ka"]) == 20
    # A read writes what is owed first.
    assert deferring.latest(DEV) == {"current_ka": Sample(start + 19_000, 29.0), "mode": Sample(start + 19_000, "m19")}
    one_m, one_h = _expected_rollups(start, 20)
    disk = _on_disk(sqlite_url)
    assert disk["owed_from_minute"] == 0
    assert disk["1m"] == one_m and disk["1h"] == one_h
    buckets = deferring.aggregate(DEV, ["current_ka"], start - start % HOUR_MS, start + HOUR_MS, MINUTE_MS)
    assert [(b.ts, b.count, b.sum) for b in buckets["current_ka"]] == [row[:3] for row in one_m]


def test_old_points_are_folded_at_once(sqlite_url: str, deferring: SqliteTelemetryStore) -> None:
    deferring.write([Point(DEV, "x", T0, 1.0), Point(DEV, "x", T0 + 1000, 3.0)], {DEV: ENT})
    disk = _on_disk(sqlite_url)
    assert disk["owed_from_minute"] == 0
    assert disk["1m"] == [(T0, 2, 4.0, 1.0, 3.0)] and disk["latest"] == [(T0 + 1000, 3.0, None)]


def test_sums_owed_for_the_flush_interval_are_flushed_by_the_next_write(
        sqlite_url: str, deferring: SqliteTelemetryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from ecoplat.telemetry import sqlite as telemetry_sqlite

    monkeypatch.setattr(telemetry_sqlite, "FLUSH_INTERVAL_S", 0.3)
    start = _now_minute()
    deferring.write([Point(DEV, "x", start, 1.0)], {DEV: ENT})
    deferring.write([Point(DEV, "x", start + 500, 1.5)], {DEV: ENT})
    assert _on_disk(sqlite_url)["1m"] == []  # owed for less than the interval: still in memory
    deferring.write([Point(DEV, "x", start + 600, 0.5)], {DEV: ENT})
    time.sleep(0.4)
    deferring.write([Point(DEV, "x", start + 1000, 2.0)], {DEV: ENT})
    disk = _on_disk(sqlite_url)
    assert disk["owed_from_minute"] == 0 and disk["1m"] == [(_minute(start), 4, 5.0, 0.5, 2.0)]


def test_a_replayed_point_after_deferred_ones_is_counted_once(sqlite_url: str, deferring: SqliteTelemetryStore) -> None:
    start = _now_minute()
    deferring.write([Point(DEV, "x", start, 1.0), Point(DEV, "x", start + 1000, 2.0)], {DEV: ENT})
    deferring.write([Point(DEV, "x", start + 1000, 5.0)], {DEV: ENT})  # the sender sends it again, changed
    deferring.flush()
    assert _on_disk(sqlite_url)["1m"] == [(_minute(start), 2, 6.0, 1.0, 5.0)]


def test_deferred_batches_of_one_frame_per_device_fold_what_folding_at_once_folds(tmp_path: Path, sqlite_url: str,
                                                                                deferring: SqliteTelemetryStore) -> None:
    """At moderate rates a batch holds one frame per device: the deferring store adds each
    straight to what it owes. The file ends up as a store folding every batch at once has it."""
    from ecoplat.migrations_runner import upgrade

    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    upgrade(other_url)
    at_once = SqliteTelemetryStore(_file(other_url))
    start = _now_minute()
    try:
        for i in range(30):
            batch = Frames([(dev, start + i * 700 + dev, {"current_ka": 10.0 + (i * dev) % 7, "volts": 3.0 - i / 10})
                            for dev in (41, 42, 43)])
            if i == 20:  # a sender sends a batch again, one value changed
                batch = Frames([(41, start + 19 * 700 + 41, {"current_ka": 99.0, "volts": 1.1})])
            for s in (deferring, at_once):
                s.write(batch, {41: ENT, 42: ENT, 43: ENT})
        deferring.flush()
        assert _on_disk(sqlite_url)["owed_from_minute"] == 0
        mine, theirs = _on_disk(sqlite_url), _on_disk(other_url)
        assert mine["1m"] == theirs["1m"] and mine["1h"] == theirs["1h"]
        assert sorted(mine["latest"]) == sorted(theirs["latest"])  # type: ignore[type-var]
        counts = [row[1] for row in mine["1m"]]  # type: ignore[union-attr]
        assert sum(counts) == 2 * 3 * 29  # 29 distinct instants of 3 devices, 2 keys; the replay once
    finally:
        at_once.close()


def test_a_due_flush_is_written_a_part_per_write_and_a_crash_halfway_loses_nothing(
        tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flush that comes due is written over the following writes, a part each, so no write
    holds the store for the whole of it. Meanwhile the file marks the oldest sums not yet
    written; a writer that dies halfway is followed by one that rebuilds them, and the file
    then holds what a store folding every batch at once holds."""
    from ecoplat.migrations_runner import upgrade
    from ecoplat.telemetry import sqlite as telemetry_sqlite

    monkeypatch.setattr(telemetry_sqlite, "FLUSH_INTERVAL_S", 0.2)
    monkeypatch.setattr(telemetry_sqlite, "FLUSH_CHUNK_ROWS", 3)
    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    upgrade(other_url)
    at_once = SqliteTelemetryStore(_file(other_url))
    deferring = SqliteTelemetryStore(_file(sqlite_url), defer=True)
    devices = range(41, 51)
    ents = dict.fromkeys(devices, ENT)
    start = _now_minute()

    def batch(i: int) -> Frames:
        return Frames([(dev, start + i * 100 + dev, {"current_ka": 10.0 + (i * dev) % 7}) for dev in devices])

    try:
        for i in range(3):
            for s in (deferring, at_once):
                s.write(batch(i), ents)
        marked = _on_disk(sqlite_url)["owed_from_minute"]
        assert marked and _on_disk(sqlite_url)["1m"] == []  # all owed, in memory
        time.sleep(0.25)
        rows_seen = []
        for i in range(3, 5):  # the flush is due: each write writes a part of it
            for s in (deferring, at_once):
                s.write(batch(i), ents)
            disk = _on_disk(sqlite_url)
            rows_seen.append(len(disk["1m"]))  # type: ignore[arg-type]
            assert disk["owed_from_minute"] == marked  # the oldest sums are not all written yet
        assert 0 < rows_seen[0] < rows_seen[1] < len(devices)
        # The writer dies with part of the flush and newer sums in memory (no flush, no unlock
        # but by the process's end: the lock file is closed as a dying process's would be).
        deferring._conn.close()
        assert deferring._lock_fd is not None
        os.close(deferring._lock_fd)
        deferring._lock_fd, deferring._closed = None, True
        deferring = SqliteTelemetryStore(_file(sqlite_url), defer=True)  # rebuilds from the mark
        for i in range(5, 7):
            for s in (deferring, at_once):
                s.write(batch(i), ents)
        deferring.flush()
        mine, theirs = _on_disk(sqlite_url), _on_disk(other_url)
        assert mine["owed_from_minute"] == 0
        assert mine["1m"] == theirs["1m"] and mine["1h"] == theirs["1h"]
        assert sorted(mine["latest"]) == sorted(theirs["latest"])  # type: ignore[type-var]
        assert sum(row[1] for row in mine["1m"]) == 7 * len(devices)  # type: ignore[union-attr]
    finally:
        deferring.close()
        at_once.close()


def test_only_one_store_defers_and_no_other_rebuilds_under_it(sqlite_url: str, deferring: SqliteTelemetryStore) -> None:
    start = _now_minute()
    deferring.write([Point(DEV, "x", start, 1.0)], {DEV: ENT})
    other = SqliteTelemetryStore(_file(sqlite_url), defer=True)
    try:
        assert not other.defer
        # The other store did not rebuild under the live writer (which still owes the sums).
        assert _on_disk(sqlite_url)["owed_from_minute"] > 0
    finally:
        other.close()
    deferring.flush()
    assert _on_disk(sqlite_url)["1m"] == [(_minute(start), 1, 1.0, 1.0, 1.0)]


@pytest.fixture
def process_store(sqlite_url: str) -> Iterator[ProcessWriteStore]:
    with open_process_store(sqlite_url) as s:
        yield s


def test_a_writer_killed_with_sums_in_memory_is_followed_by_one_that_rebuilds_them(
        sqlite_url: str, process_store: ProcessWriteStore) -> None:
    start = _now_minute()
    frames = _recent_frames(start, 40)
    for i in range(0, 40, 5):
        process_store.write(Frames(frames.frames[i:i + 5]), {DEV: ENT})
    disk = _on_disk(sqlite_url)
    assert disk["owed_from_minute"] > 0 and disk["latest"] == []  # owed, in the writer's memory
    pid = process_store.writer_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert process_gone(pid)
    # A read right after the crash: the next writer takes the lock and rebuilds before it answers.
    assert process_store.latest(DEV) == {"current_ka": Sample(start + 39_000, 49.0), "mode": Sample(start + 39_000, "m39")}
    assert process_store.writer_pid not in (None, pid)
    process_store.write([Point(DEV, "current_ka", start + 40_000, 50.0)], {DEV: ENT})
    assert process_store.latest(DEV) == {"current_ka": Sample(start + 40_000, 50.0), "mode": Sample(start + 39_000, "m39")}
    one_m, one_h = _expected_rollups(start, 40)
    minutes = {b: list(row) for b, *row in one_m}
    b = start + 40_000 - (start + 40_000) % MINUTE_MS
    minutes[b][0] += 1
    minutes[b][1] += 50.0
    minutes[b][3] = max(minutes[b][3], 50.0)
    disk = _on_disk(sqlite_url)
    assert disk["owed_from_minute"] == 0
    assert disk["1m"] == [(b_, *row) for b_, row in sorted(minutes.items())]
    assert [r[:3] for r in disk["1h"]] == [(h, c + 1, s + 50.0) for h, c, s, _, _ in one_h]


def test_an_idle_writer_flushes_by_itself(sqlite_url: str, process_store: ProcessWriteStore) -> None:
    start = _now_minute()
    process_store.write([Point(DEV, "x", start, 1.0)], {DEV: ENT})
    deadline = time.monotonic() + 10
    while _on_disk(sqlite_url)["owed_from_minute"] != 0:
        assert time.monotonic() < deadline, "the idle writer never flushed"
        time.sleep(0.05)
    assert _on_disk(sqlite_url)["latest"] == [(start, 1.0, None)]
