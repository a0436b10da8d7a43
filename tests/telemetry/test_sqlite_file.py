"""SQLite: the telemetry store lives in a file of its own (migration 0006), so its long batch
transactions never hold the write lock that alarms, acknowledgements and the API need."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text

from ecoplat.db import Database
from ecoplat.migrations_runner import alembic_config, upgrade
from ecoplat.telemetry.points import Point, Sample
from ecoplat.telemetry.sqlite import TABLES, SqliteTelemetryStore, telemetry_path
from ecoplat.telemetry.store import open_store


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_the_file_sits_beside_the_database() -> None:
    assert telemetry_path("/var/lib/ecoplat/ecoplat.db") == "/var/lib/ecoplat/ecoplat.telemetry.db"
    assert telemetry_path("/data/plant") == "/data/plant.telemetry.db"


def test_an_existing_history_moves_to_the_telemetry_file_and_back(tmp_path: Path) -> None:
    main = tmp_path / "plant.db"
    url = f"sqlite:///{main}"
    upgrade(url, "0005")
    with sqlite3.connect(main) as conn:  # a history written before the split
        conn.execute("INSERT INTO telemetry_series VALUES (1, 7, 9, 'current_ka')")
        conn.executemany("INSERT INTO telemetry_raw VALUES (1, ?, ?, NULL)", [(i, i / 4) for i in range(25_000)])
        conn.execute("INSERT INTO telemetry_latest VALUES (1, 24999, 6249.75, NULL)")
        conn.execute("INSERT INTO telemetry_agg_1m VALUES (1, 0, 2, 3.0, 1.0, 2.0)")
    upgrade(url)
    side = Path(telemetry_path(str(main)))
    assert set(TABLES) <= _tables(side)
    assert not set(TABLES) & _tables(main) and "telemetry_retention" in _tables(main)
    store = open_store(url)
    try:
        assert store.keys(9) == ["current_ka"]
        assert len(store.range(9, ["current_ka"], 0, 30_000, limit=100_000)["current_ka"]) == 25_000
        assert store.latest(9)["current_ka"] == Sample(24999, 6249.75)
    finally:
        store.close()
    # the schema the models describe matches the main file once the store's tables are discounted
    command.check(alembic_config(url))

    command.downgrade(alembic_config(url), "0005")
    with sqlite3.connect(main) as conn:
        assert conn.execute("SELECT count(*), sum(v_num) FROM telemetry_raw").fetchone() == (
            25_000, sum(i / 4 for i in range(25_000)))
        assert conn.execute("SELECT * FROM telemetry_series").fetchall() == [(1, 7, 9, "current_ka")]
    # upgrading again replaces what the file held with the main file's rows (the truth until then)
    with sqlite3.connect(main) as conn:
        conn.execute("DELETE FROM telemetry_raw WHERE ts >= 100")
    upgrade(url)
    with sqlite3.connect(side) as conn:
        assert conn.execute("SELECT count(*) FROM telemetry_raw").fetchone() == (100,)


def test_a_missing_telemetry_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ecoplat migrate"):
        SqliteTelemetryStore(str(tmp_path / "nowhere.telemetry.db"))
    empty = tmp_path / "empty.telemetry.db"
    sqlite3.connect(empty).close()
    with pytest.raises(RuntimeError, match="lacks telemetry_series"):
        SqliteTelemetryStore(str(empty))


def test_a_telemetry_write_in_progress_does_not_hold_up_the_main_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'plant.db'}"
    upgrade(url)
    store = open_store(url)
    database = Database(url)
    entered, release = threading.Event(), threading.Event()
    original = store._write_batch

    def held(conn, points, enterprise_of):  # type: ignore[no-untyped-def]
        original(conn, points, enterprise_of)
        entered.set()  # the telemetry file's write lock is held from here until release
        assert release.wait(10)

    store._write_batch = held  # type: ignore[method-assign]
    writer = threading.Thread(target=store.write, args=([Point(1, "v", 1, 1.0)], {1: 1}))
    writer.start()
    try:
        assert entered.wait(10)
        with database.engine.connect() as conn:  # an alarm write: it must not wait at all
            conn.exec_driver_sql("PRAGMA busy_timeout = 0")
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            conn.execute(text("INSERT INTO telemetry_retention (enterprise_id, days, updated_at) "
                              "SELECT id, 30, '2026-01-01' FROM enterprises LIMIT 0"))
            conn.exec_driver_sql("COMMIT")
    finally:
        release.set()
        writer.join(10)
    assert store.latest(1)["v"] == Sample(1, 1.0)
    store.close()
    database.dispose()
