"""SQLite: raw points of the last seconds live in a table ordered by time (migration 0007) and
are merged into the series table every second. A point is in exactly one of the two; reads,
replays, deletes and retention see both; the boundary starts past every stored row."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecoplat.migrations_runner import upgrade
from ecoplat.telemetry import sqlite as telemetry_sqlite
from ecoplat.telemetry.points import Point, Sample
from ecoplat.telemetry.query import MINUTE_MS
from ecoplat.telemetry.sqlite import SqliteTelemetryStore, telemetry_path

from .builders import T0, open_process_store, process_gone

DEV, ENT = 41, 7


@pytest.fixture
def store(sqlite_url: str) -> Iterator[SqliteTelemetryStore]:
    s = SqliteTelemetryStore(telemetry_path(sqlite_url.removeprefix("sqlite:///")))
    yield s
    s.close()


def _disk(sqlite_url: str) -> dict[str, object]:
    with sqlite3.connect(telemetry_path(sqlite_url.removeprefix("sqlite:///"))) as conn:
        return {
            "raw": conn.execute("SELECT ts, v_num, v_str FROM telemetry_raw ORDER BY ts").fetchall(),
            "recent": conn.execute("SELECT ts, v_num, v_str FROM telemetry_raw_recent ORDER BY ts").fetchall(),
            "recent_from": conn.execute("SELECT value FROM telemetry_state WHERE name = 'recent_from'").fetchone()[0],
        }


def _now() -> int:
    return int(time.time() * 1000)


def _merge_now(store: SqliteTelemetryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next write merges everything up to the clock (as if RECENT_WINDOW_MS had passed)."""
    monkeypatch.setattr(telemetry_sqlite, "RECENT_WINDOW_MS", 0)
    store._merged_at = 0.0


def test_recent_points_go_to_the_recent_table_and_reads_see_both(sqlite_url: str, store: SqliteTelemetryStore) -> None:
    now = _now()
    old = [Point(DEV, "x", T0 + i * 1000, float(i)) for i in range(3)]
    recent = [Point(DEV, "x", now - 3000 + i * 1000, 10.0 + i) for i in range(3)]
    store.write(old + recent + [Point(DEV, "mode", now, "auto")], {DEV: ENT})
    disk = _disk(sqlite_url)
    assert [r[0] for r in disk["raw"]] == [p.ts for p in old]
    assert [r[:2] for r in disk["recent"]] == [(p.ts, p.value) for p in recent] + [(now, None)]
    assert disk["recent"][-1][2] is not None  # the text value
    both = store.range(DEV, ["x"], 0, now + 1)["x"]
    assert [s.value for s in both] == [0.0, 1.0, 2.0, 10.0, 11.0, 12.0]
    assert [s.value for s in store.range(DEV, ["x"], 0, now + 1, limit=4, newest_first=True)["x"]] == [12.0, 11.0, 10.0, 2.0]
    assert [s.value for s in store.range(DEV, ["x"], 0, now + 1, limit=2)["x"]] == [0.0, 1.0]
    assert store.range(DEV, ["mode"], 0, now + 1)["mode"] == [Sample(now, "auto")]
    # A raw edge of an aggregate (the current minute) counts the recent rows too.
    start = now - now % MINUTE_MS
    buckets = store.aggregate(DEV, ["x"], start - MINUTE_MS, now + 1, MINUTE_MS)["x"]
    assert sum(b.count for b in buckets) == 3 and sum(b.sum for b in buckets) == 33.0


def test_a_merge_moves_aged_rows_and_the_boundary_and_reads_do_not_change(
        sqlite_url: str, store: SqliteTelemetryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    now = _now()
    store.write([Point(DEV, "x", now - 2000, 1.0), Point(DEV, "x", now - 1000, 2.0)], {DEV: ENT})
    assert len(_disk(sqlite_url)["recent"]) == 2
    _merge_now(store, monkeypatch)
    later = _now() + 5
    store.write([Point(DEV, "x", later + 60_000, 3.0)], {DEV: ENT})  # ahead of the clock: stays recent
    disk = _disk(sqlite_url)
    assert [r[:2] for r in disk["raw"]] == [(now - 2000, 1.0), (now - 1000, 2.0)]
    assert [r[:2] for r in disk["recent"]] == [(later + 60_000, 3.0)]
    assert now - 1000 < disk["recent_from"] <= later + 60_000
    assert [s.value for s in store.range(DEV, ["x"], 0, later + 70_000)["x"]] == [1.0, 2.0, 3.0]
    # A point before the boundary now goes to the series table; one sent again is a replay there.
    store.write([Point(DEV, "x", now - 1500, 1.5), Point(DEV, "x", now - 1000, 2.5)], {DEV: ENT})
    disk = _disk(sqlite_url)
    assert [r[:2] for r in disk["raw"]] == [(now - 2000, 1.0), (now - 1500, 1.5), (now - 1000, 2.5)]
    assert len(disk["recent"]) == 1


def test_a_recent_point_sent_again_is_counted_once(sqlite_url: str, store: SqliteTelemetryStore) -> None:
    now = _now()
    store.write([Point(DEV, "x", now - 2000, 1.0), Point(DEV, "x", now - 1000, 2.0)], {DEV: ENT})
    store.write([Point(DEV, "x", now - 1000, 5.0)], {DEV: ENT})
    assert [r[:2] for r in _disk(sqlite_url)["recent"]] == [(now - 2000, 1.0), (now - 1000, 5.0)]
    start = now - 2000 - (now - 2000) % MINUTE_MS
    buckets = store.aggregate(DEV, ["x"], start, start + 2 * MINUTE_MS, MINUTE_MS)["x"]
    assert (sum(b.count for b in buckets), sum(b.sum for b in buckets)) == (2, 6.0)


def test_deleting_a_device_and_retention_reach_the_recent_table(sqlite_url: str, store: SqliteTelemetryStore) -> None:
    now = _now()
    store.write([Point(DEV, "x", T0, 0.5), Point(DEV, "x", now - 1000, 1.0), Point(DEV, "x", now, 2.0)],
                {DEV: ENT})
    assert store.apply_retention(ENT, now) == 2  # T0's row and the recent one before the cutoff
    assert [r[:2] for r in _disk(sqlite_url)["recent"]] == [(now, 2.0)]
    assert store.delete_device(DEV) == 1
    assert _disk(sqlite_url)["recent"] == [] and store.range(DEV, ["x"], 0, now + 1) == {"x": []}


def test_the_boundary_starts_past_every_row_already_stored(tmp_path: Path) -> None:
    u = f"sqlite:///{tmp_path / 'plant.db'}"
    upgrade(u, "0006")
    ahead = _now() + 3_600_000  # a device whose clock runs an hour ahead wrote this
    with sqlite3.connect(telemetry_path(str(tmp_path / "plant.db"))) as conn:
        conn.execute("INSERT INTO telemetry_series VALUES (1, 7, 9, 'x')")
        conn.execute("INSERT INTO telemetry_raw VALUES (1, ?, 1.0, NULL)", (ahead,))
    upgrade(u)
    assert _disk(u)["recent_from"] == ahead + 1


def test_a_killed_writer_owing_sums_of_recent_points_is_repaired_from_the_recent_table(sqlite_url: str) -> None:
    with open_process_store(sqlite_url) as s:
        now = _now()
        s.write([Point(DEV, "x", now - 3000 + i * 1000, 10.0 + i) for i in range(3)], {DEV: ENT})
        assert len(_disk(sqlite_url)["recent"]) == 3
        pid = s.writer_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert process_gone(pid)
        assert s.latest(DEV) == {"x": Sample(now - 1000, 12.0)}
        # Reads in this process see the recent table as the writer's store does.
        assert [x.value for x in s.range(DEV, ["x"], 0, now + 1)["x"]] == [10.0, 11.0, 12.0]
        start = (now - 3000) - (now - 3000) % MINUTE_MS
        buckets = s.aggregate(DEV, ["x"], start, start + 2 * MINUTE_MS, MINUTE_MS)["x"]
        assert (sum(b.count for b in buckets), sum(b.sum for b in buckets)) == (3, 33.0)


def test_downgrading_keeps_the_recent_points(sqlite_url: str, store: SqliteTelemetryStore) -> None:
    from alembic import command

    from ecoplat.migrations_runner import alembic_config

    now = _now()
    store.write([Point(DEV, "x", T0, 1.0), Point(DEV, "x", now, 2.0)], {DEV: ENT})
    store.close()
    command.downgrade(alembic_config(sqlite_url), "0006")
    with sqlite3.connect(telemetry_path(sqlite_url.removeprefix("sqlite:///"))) as conn:
        assert conn.execute("SELECT ts, v_num FROM telemetry_raw ORDER BY ts").fetchall() == [(T0, 1.0), (now, 2.0)]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert not {"telemetry_raw_recent", "telemetry_state"} & tables


def test_an_idle_writer_merges_aged_rows_and_otherwise_writes_nothing(
        sqlite_url: str, store: SqliteTelemetryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    now = _now()
    store.write([Point(DEV, "x", now - 1000, 1.0)], {DEV: ENT})
    observer = sqlite3.connect(telemetry_path(sqlite_url.removeprefix("sqlite:///")))
    try:
        def version() -> int:  # changes whenever another connection commits to the file
            return int(observer.execute("PRAGMA data_version").fetchone()[0])

        before = version()
        store._merged_at = 0.0
        store.idle()  # the row is younger than RECENT_WINDOW_MS: nothing to do, nothing written
        assert version() == before and len(_disk(sqlite_url)["recent"]) == 1
        _merge_now(store, monkeypatch)
        store.idle()
        assert version() != before
    finally:
        observer.close()
    disk = _disk(sqlite_url)
    assert disk["recent"] == [] and [r[:2] for r in disk["raw"]] == [(now - 1000, 1.0)]
