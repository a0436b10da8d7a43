"""telemetry (SQLite): recent raw points in a table ordered by time, merged into the series table

`telemetry_raw` is clustered by (series, ts): a batch from a thousand devices lands in one leaf
page per series, and in a store of millions of points every batch rewrote about ten thousand
pages (40 MB of WAL for 1,500 messages). Points within a few seconds of the clock now go to
`telemetry_raw_recent`, clustered by (ts, series): a batch appends to a handful of pages. Every
few seconds the store moves what has aged into `telemetry_raw`, each series' page written once
for seconds of points. `telemetry_state.recent_from` is the boundary: every raw row with ts at
or after it is in the recent table, every row before it in the series table, so a (series, ts)
lives in exactly one of them.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""
import contextlib
import sqlite3
import time
from collections.abc import Iterator, Sequence

from alembic import op
from sqlalchemy.engine import Connection

from ecoplat.telemetry.sqlite import RECENT_WINDOW_MS, telemetry_path

revision: str = '0007'
down_revision: str | Sequence[str] | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RECENT = ("CREATE TABLE telemetry_raw_recent (ts BIGINT NOT NULL, series_id INTEGER NOT NULL, v_num FLOAT, "
          "v_str TEXT, CONSTRAINT pk_telemetry_raw_recent PRIMARY KEY (ts, series_id)) WITHOUT ROWID")
STATE = ("CREATE TABLE telemetry_state (name VARCHAR(64) NOT NULL, value BIGINT NOT NULL, "
         "CONSTRAINT pk_telemetry_state PRIMARY KEY (name)) WITHOUT ROWID")


def _main_file(bind: Connection) -> str | None:
    for _seq, name, file in bind.exec_driver_sql("PRAGMA database_list"):
        if name == "main":
            return file or None
    return None


@contextlib.contextmanager
def _side(bind: Connection) -> Iterator[sqlite3.Connection | None]:
    """The telemetry file in one write transaction, or None where there is none."""
    if bind.dialect.name != "sqlite" or (main := _main_file(bind)) is None:
        yield None
        return
    conn = sqlite3.connect(telemetry_path(main), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()


def upgrade() -> None:
    with _side(op.get_bind()) as side:
        if side is None:
            return
        side.execute("DROP TABLE IF EXISTS telemetry_raw_recent")
        side.execute("DROP TABLE IF EXISTS telemetry_state")
        side.execute(RECENT)
        side.execute(STATE)
        # Past every row already stored (a device with a clock ahead may have written some).
        newest = side.execute("SELECT max(ts) FROM telemetry_raw").fetchone()[0]
        start = int(time.time() * 1000) - RECENT_WINDOW_MS
        side.execute("INSERT INTO telemetry_state (name, value) VALUES ('recent_from', ?)",
                     (max(start, newest + 1) if newest is not None else start,))


def downgrade() -> None:
    with _side(op.get_bind()) as side:
        if side is None:
            return
        side.execute("INSERT OR REPLACE INTO telemetry_raw (series_id, ts, v_num, v_str) "
                     "SELECT series_id, ts, v_num, v_str FROM telemetry_raw_recent")
        side.execute("DROP TABLE telemetry_raw_recent")
        side.execute("DROP TABLE telemetry_state")
