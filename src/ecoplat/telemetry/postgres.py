"""The scaled-out telemetry store: PostgreSQL with telemetry_raw range-partitioned by ts (one
partition per ISO week, created on demand), bulk writes by COPY.

A batch is COPYed into a temporary staging table, then moved with set-based statements in the
same transaction: raw rows with INSERT … ON CONFLICT DO NOTHING (every row new: the rollups are
folded from the staging table with additive upserts) or, when some (series, ts) already existed,
ON CONFLICT DO UPDATE and a recompute of the touched buckets, so a replay never counts twice.
Retention drops a whole partition when it is past the cutoff and holds no other enterprise's
rows, and deletes row by row otherwise."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from ecoplat.telemetry.base import SqlTelemetryStore
from ecoplat.telemetry.points import Point
from ecoplat.telemetry.query import DAY_MS, HOUR_MS, MINUTE_MS, encode

WEEK_MS = 7 * DAY_MS
# 1970-01-05 was a Monday: partitions run Monday 00:00 UTC to the next Monday.
_MONDAY_MS = 4 * DAY_MS

_STAGE = ("CREATE TEMP TABLE IF NOT EXISTS telemetry_stage (seq integer, series_id integer, ts bigint, "
          "v_num double precision, v_str text) ON COMMIT DELETE ROWS")
_DEDUP = ("SELECT DISTINCT ON (series_id, ts) series_id, ts, v_num, v_str FROM telemetry_stage "
          "ORDER BY series_id, ts, seq DESC")


def week_start(ts: int) -> int:
    return ts - (ts - _MONDAY_MS) % WEEK_MS


def partition_name(start_ms: int) -> str:
    return "telemetry_raw_w" + datetime.fromtimestamp(start_ms / 1000, UTC).strftime("%Y%m%d")


def _fold(table: str, width: int) -> str:
    # ORDER BY keeps the row-lock order the same in every writer process (no deadlocks).
    return (f"INSERT INTO {table} (series_id, bucket_ts, count, sum, min, max) "
            f"SELECT series_id, ts - ts % {width}, count(*), sum(v_num), min(v_num), max(v_num) "
            f"FROM telemetry_stage WHERE v_num IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2 "
            f"ON CONFLICT (series_id, bucket_ts) DO UPDATE SET count = {table}.count + excluded.count, "
            f"sum = {table}.sum + excluded.sum, min = LEAST({table}.min, excluded.min), "
            f"max = GREATEST({table}.max, excluded.max)")


_RECOMPUTE_1M = (
    "WITH t AS (SELECT DISTINCT series_id, ts - ts % 60000 AS b FROM telemetry_stage) "
    "INSERT INTO telemetry_agg_1m (series_id, bucket_ts, count, sum, min, max) "
    "SELECT r.series_id, t.b, count(*), sum(r.v_num), min(r.v_num), max(r.v_num) FROM t "
    "JOIN telemetry_raw r ON r.series_id = t.series_id AND r.ts >= t.b AND r.ts < t.b + 60000 "
    "WHERE r.v_num IS NOT NULL GROUP BY r.series_id, t.b ORDER BY 1, 2 "
    "ON CONFLICT (series_id, bucket_ts) DO UPDATE SET count = excluded.count, sum = excluded.sum, "
    "min = excluded.min, max = excluded.max")
_DELETE_EMPTY_1M = (
    "DELETE FROM telemetry_agg_1m a USING (SELECT DISTINCT series_id, ts - ts % 60000 AS b "
    "FROM telemetry_stage) t WHERE a.series_id = t.series_id AND a.bucket_ts = t.b")
_RECOMPUTE_1H = (
    "INSERT INTO telemetry_agg_1h (series_id, bucket_ts, count, sum, min, max) "
    "SELECT m.series_id, t.b, sum(m.count), sum(m.sum), min(m.min), max(m.max) "
    "FROM (SELECT DISTINCT series_id, ts - ts % 3600000 AS b FROM telemetry_stage) t "
    "JOIN telemetry_agg_1m m ON m.series_id = t.series_id AND m.bucket_ts >= t.b "
    "AND m.bucket_ts < t.b + 3600000 GROUP BY m.series_id, t.b ORDER BY 1, 2")
_DELETE_TOUCHED_1H = (
    "DELETE FROM telemetry_agg_1h a USING (SELECT DISTINCT series_id, ts - ts % 3600000 AS b "
    "FROM telemetry_stage) t WHERE a.series_id = t.series_id AND a.bucket_ts = t.b")
_UPSERT_LATEST = (
    "INSERT INTO telemetry_latest (series_id, ts, v_num, v_str) "
    "SELECT DISTINCT ON (series_id) series_id, ts, v_num, v_str FROM telemetry_stage "
    "ORDER BY series_id, ts DESC, seq DESC "
    "ON CONFLICT (series_id) DO UPDATE SET ts = excluded.ts, v_num = excluded.v_num, "
    "v_str = excluded.v_str WHERE excluded.ts >= telemetry_latest.ts")


class PostgresTelemetryStore(SqlTelemetryStore):
    placeholder = "%s"

    def __init__(self, conninfo: str, *, max_connections: int = 8) -> None:
        super().__init__()
        self.conninfo = conninfo
        self._pool = ConnectionPool(conninfo, min_size=1, max_size=max_connections, open=True,
                                    kwargs={"autocommit": False}, name="ecoplat-telemetry")
        # The writer has a connection of its own, so ingest never queues behind page reads.
        self._write_pool = ConnectionPool(conninfo, min_size=1, max_size=1, open=True,
                                          kwargs={"autocommit": False}, name="ecoplat-telemetry-writer")
        self._partitions: set[int] = set()
        self._staged_pids: set[int] = set()  # sessions that already have the staging table
        self._partitions_lock = threading.Lock()
        self._load_partitions()

    @contextlib.contextmanager
    def _reader(self) -> Iterator[psycopg.Connection[Any]]:
        with self._pool.connection() as conn:
            yield conn

    def close(self) -> None:
        self._write_pool.close()
        self._pool.close()

    # -- partitions -------------------------------------------------------------------------
    def _load_partitions(self) -> None:
        with self._pool.connection() as conn:
            names = [r[0] for r in conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'telemetry_raw'::regclass").fetchall()]
        starts = set()
        for name in names:
            if name.startswith("telemetry_raw_w"):
                day = datetime.strptime(name[len("telemetry_raw_w"):], "%Y%m%d").replace(tzinfo=UTC)
                starts.add(int(day.timestamp() * 1000))
        with self._partitions_lock:
            self._partitions = starts

    def partitions(self) -> list[tuple[str, int, int]]:
        """(name, start, end) of every raw partition this store knows, oldest first."""
        self._load_partitions()
        return [(partition_name(s), s, s + WEEK_MS) for s in sorted(self._partitions)]

    def _ensure_partitions(self, weeks: set[int]) -> None:
        missing = weeks - self._partitions
        if not missing:
            return
        # DDL in its own short transaction, so the batch's transaction never holds the parent's
        # lock longer than needed; a concurrent writer creating the same week is harmless.
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            for start in sorted(missing):
                name = partition_name(start)
                with contextlib.suppress(psycopg.errors.DuplicateTable, psycopg.errors.UniqueViolation):
                    conn.execute(f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF telemetry_raw "
                                 f"FOR VALUES FROM ({start}) TO ({start + WEEK_MS})")
        with self._partitions_lock:
            self._partitions |= missing

    # -- write ------------------------------------------------------------------------------
    def write(self, points: Sequence[Point], enterprise_of: Mapping[int, int]) -> None:
        if not points:
            return
        try:
            self._write(points, enterprise_of)
        except psycopg.errors.CheckViolation:
            # "no partition found for row": another process dropped a week this one still had
            # cached (retention). Reload the list and try once more.
            self._load_partitions()
            self._write(points, enterprise_of)

    def _write(self, points: Sequence[Point], enterprise_of: Mapping[int, int]) -> None:
        with self._write_lock, self._write_pool.connection() as conn:
            try:
                rows = self._stage_rows(conn, points, enterprise_of)
                self._ensure_partitions({week_start(r[2]) for r in rows})
                pid = conn.info.backend_pid
                if pid not in self._staged_pids:
                    conn.execute(_STAGE)
                    self._staged_pids.add(pid)
                # Repeats of a (series, ts) inside the batch need the slower, deduplicating path.
                unique = len({(r[1], r[2]) for r in rows}) == len(rows)
                with conn.cursor() as cur:
                    with cur.copy("COPY telemetry_stage (seq, series_id, ts, v_num, v_str) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
                    inserted = cur.execute(
                        "INSERT INTO telemetry_raw (series_id, ts, v_num, v_str) "
                        "SELECT series_id, ts, v_num, v_str FROM telemetry_stage "
                        "ON CONFLICT (series_id, ts) DO NOTHING").rowcount if unique else -1
                    if inserted == len(rows):
                        cur.execute(_fold("telemetry_agg_1m", MINUTE_MS))
                        cur.execute(_fold("telemetry_agg_1h", HOUR_MS))
                    else:
                        cur.execute(
                            f"INSERT INTO telemetry_raw (series_id, ts, v_num, v_str) {_DEDUP} "
                            f"ON CONFLICT (series_id, ts) DO UPDATE SET v_num = excluded.v_num, "
                            f"v_str = excluded.v_str")
                        cur.execute(_DELETE_EMPTY_1M)
                        cur.execute(_RECOMPUTE_1M)
                        cur.execute(_DELETE_TOUCHED_1H)
                        cur.execute(_RECOMPUTE_1H)
                    cur.execute(_UPSERT_LATEST)
                conn.commit()
            except BaseException:
                conn.rollback()
                self._series.clear()
                raise

    def _stage_rows(self, conn: psycopg.Connection[Any], points: Sequence[Point],
                    enterprise_of: Mapping[int, int]) -> list[tuple[int, int, int, Any, str | None]]:
        rows: list[tuple[int, int, int, Any, str | None]] = []
        append = rows.append
        last_dev: int | None = None
        keys: dict[str, int] = {}

        def load(device_id: int) -> tuple[int | None, dict[str, int]]:
            found = conn.execute("SELECT key, id, enterprise_id FROM telemetry_series WHERE device_id = %s",
                                 (device_id,)).fetchall()
            return (found[0][2] if found else None), {k: sid for k, sid, _ in found}

        def move(device_id: int, enterprise_id: int) -> None:
            conn.execute("UPDATE telemetry_series SET enterprise_id = %s WHERE device_id = %s",
                         (enterprise_id, device_id))

        for seq, p in enumerate(points):
            if p.device_id != last_dev:
                last_dev = p.device_id
                keys = self._resolve_device(last_dev, enterprise_of, load, move)
            sid = keys.get(p.key)
            if sid is None:
                sid = self._create_series(conn, last_dev, p.key)
                keys[p.key] = sid
            v = p.value
            t = type(v)
            if (t is float or t is int) and v - v == 0:  # finite
                append((seq, sid, p.ts, float(v), None))
            else:
                append((seq, sid, p.ts, *encode(v)))
        return rows

    def _create_series(self, conn: psycopg.Connection[Any], device_id: int, key: str) -> int:
        enterprise_id = self._series.by_device[device_id][0]
        conn.execute("INSERT INTO telemetry_series (enterprise_id, device_id, key) VALUES (%s, %s, %s) "
                     "ON CONFLICT (device_id, key) DO NOTHING", (enterprise_id, device_id, key))
        return conn.execute("SELECT id FROM telemetry_series WHERE device_id = %s AND key = %s",
                            (device_id, key)).fetchone()[0]  # type: ignore[index]

    # -- retention --------------------------------------------------------------------------
    def apply_retention(self, enterprise_id: int, older_than_ms: int) -> int:
        """Drops whole weekly partitions that end before the cutoff and hold only this
        enterprise's series; deletes the enterprise's older rows everywhere else."""
        deleted = 0
        for name, _start, end in self.partitions():
            if end > older_than_ms:
                continue
            with self._pool.connection() as conn:
                others = conn.execute(
                    f"SELECT EXISTS (SELECT 1 FROM {name} r WHERE r.series_id IN "
                    f"(SELECT id FROM telemetry_series WHERE enterprise_id <> %s))", (enterprise_id,)
                ).fetchone()[0]  # type: ignore[index]
                if not others:
                    deleted += conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0]  # type: ignore[index]
                    conn.execute(f"DROP TABLE {name}")
                    conn.commit()
                    with self._partitions_lock:
                        self._partitions.discard(_start)
        with self._pool.connection() as conn:
            deleted += conn.execute(
                "DELETE FROM telemetry_raw WHERE series_id IN "
                "(SELECT id FROM telemetry_series WHERE enterprise_id = %s) AND ts < %s",
                (enterprise_id, older_than_ms)).rowcount
            conn.execute(
                "DELETE FROM telemetry_agg_1m WHERE series_id IN "
                "(SELECT id FROM telemetry_series WHERE enterprise_id = %s) AND bucket_ts <= %s",
                (enterprise_id, older_than_ms - MINUTE_MS))
        return deleted

    def delete_device(self, device_id: int) -> int:
        """Deletes every series of the device with its points, rollups and latest values (a
        deleted device's id must not hand its history to a device created later). Returns the
        number of raw points deleted."""
        with self._write_lock, self._write_pool.connection() as conn:
            try:
                series = "SELECT id FROM telemetry_series WHERE device_id = %s"
                deleted = conn.execute(f"DELETE FROM telemetry_raw WHERE series_id IN ({series})",
                                       (device_id,)).rowcount
                for table in ("telemetry_agg_1m", "telemetry_agg_1h", "telemetry_latest"):
                    conn.execute(f"DELETE FROM {table} WHERE series_id IN ({series})", (device_id,))
                conn.execute("DELETE FROM telemetry_series WHERE device_id = %s", (device_id,))
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            finally:
                self._series.by_device.pop(device_id, None)
        return deleted
