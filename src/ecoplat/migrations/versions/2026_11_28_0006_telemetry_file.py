"""telemetry (SQLite): the store's tables move to a file of their own beside the database

SQLite has one write lock per file. A telemetry batch from a thousand devices dirties a page per
series and holds that lock for tens of milliseconds; sharing the file, every alarm,
acknowledgement and API write waited behind it. `ecoplat.db` keeps everything else (the
retention settings included); `ecoplat.telemetry.db` holds series, raw points, latest values and
rollups. PostgreSQL keeps one database: its row locks do not serialize writers.

The rows are copied, not recreated: an installation keeps its history. Until this migration
commits, the tables in the main file are the truth, so a copy left by an attempt that failed is
replaced on the next try.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""
import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

from alembic import op
from sqlalchemy.engine import Connection

from ecoplat.telemetry.sqlite import telemetry_path

revision: str = '0006'
down_revision: str | Sequence[str] | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ROLLUP = ("(series_id INTEGER NOT NULL, bucket_ts BIGINT NOT NULL, count BIGINT NOT NULL, sum FLOAT NOT NULL, "
           "min FLOAT NOT NULL, max FLOAT NOT NULL, CONSTRAINT pk_{0} PRIMARY KEY (series_id, bucket_ts)) "
           "WITHOUT ROWID")
# The tables exactly as migration 0002 made them on SQLite, with their columns in order.
TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "telemetry_series": (
        '(id INTEGER NOT NULL, enterprise_id INTEGER NOT NULL, device_id INTEGER NOT NULL, '
        '"key" VARCHAR(255) NOT NULL, CONSTRAINT pk_telemetry_series PRIMARY KEY (id), '
        'CONSTRAINT uq_telemetry_series_device_id_key UNIQUE (device_id, "key"))',
        ("id", "enterprise_id", "device_id", '"key"')),
    "telemetry_raw": (
        "(series_id INTEGER NOT NULL, ts BIGINT NOT NULL, v_num FLOAT, v_str TEXT, "
        "CONSTRAINT pk_telemetry_raw PRIMARY KEY (series_id, ts)) WITHOUT ROWID",
        ("series_id", "ts", "v_num", "v_str")),
    "telemetry_latest": (
        "(series_id INTEGER NOT NULL, ts BIGINT NOT NULL, v_num FLOAT, v_str TEXT, "
        "CONSTRAINT pk_telemetry_latest PRIMARY KEY (series_id)) WITHOUT ROWID",
        ("series_id", "ts", "v_num", "v_str")),
    "telemetry_agg_1m": (_ROLLUP.format("telemetry_agg_1m"),
                         ("series_id", "bucket_ts", "count", "sum", "min", "max")),
    "telemetry_agg_1h": (_ROLLUP.format("telemetry_agg_1h"),
                         ("series_id", "bucket_ts", "count", "sum", "min", "max")),
}
INDEX = "CREATE INDEX ix_telemetry_series_enterprise_id ON telemetry_series (enterprise_id)"
CHUNK = 10_000


def _main_file(bind: Connection) -> str | None:
    """The main database's file, or None for an in-memory database (no store can open one)."""
    for _seq, name, file in bind.exec_driver_sql("PRAGMA database_list"):
        if name == "main":
            return file or None
    return None


def _create(execute, drop_first: bool) -> None:  # type: ignore[no-untyped-def]
    for table, (columns, _) in TABLES.items():
        if drop_first:
            execute(f"DROP TABLE IF EXISTS {table}")
        execute(f"CREATE TABLE {table} {columns}")
    execute(INDEX)


def _copy(rows_of, insert) -> None:  # type: ignore[no-untyped-def]
    """Every table's rows, a chunk at a time (a history can be large)."""
    for table, (_, columns) in TABLES.items():
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        for chunk in rows_of(f"SELECT {', '.join(columns)} FROM {table}"):
            insert(sql, chunk)


@contextlib.contextmanager
def _file(path: str) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        yield conn
    finally:
        conn.close()


def _chunks(cursor) -> Iterator[list]:  # type: ignore[no-untyped-def]
    while rows := cursor.fetchmany(CHUNK):
        yield [tuple(r) for r in rows]


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite" or (main := _main_file(bind)) is None:
        return
    with _file(telemetry_path(main)) as side:
        side.execute("BEGIN IMMEDIATE")
        try:
            _create(side.execute, drop_first=True)
            _copy(lambda sql: _chunks(bind.exec_driver_sql(sql)), side.executemany)
            side.execute("COMMIT")
        except BaseException:
            side.execute("ROLLBACK")
            raise
    for table in reversed(TABLES):
        op.execute(f"DROP TABLE {table}")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite" or (main := _main_file(bind)) is None:
        return
    path = telemetry_path(main)
    _create(bind.exec_driver_sql, drop_first=False)
    # The file stays: this transaction has not committed yet. A later upgrade replaces its tables.
    if Path(path).is_file():
        with _file(path) as side:
            _copy(lambda sql: _chunks(side.execute(sql)), bind.exec_driver_sql)
