"""The embedded telemetry store: a SQLite file of its own beside the app's database
(`ecoplat.db` → `ecoplat.telemetry.db`, tables from migrations 0002, 0006 and 0007), written
through the raw sqlite3 driver.

Its own file because SQLite has one write lock per file: a telemetry batch of a thousand devices
dirties a page per series and holds that lock for tens of milliseconds, and in a shared file
every alarm, acknowledgement and API write queued behind it. Nothing joins these tables with
the app's (series refer to devices by id, without a foreign key), so the split costs no query.

One batch is one transaction: multi-row INSERTs of its raw rows, then the latest values and the
1 min / 1 h rollups folded in Python and upserted (one row per touched series and bucket, not per
point). WAL with synchronous=NORMAL makes a committed batch survive a crash of the process, so
write() returning means durable.

Raw rows live in two WITHOUT ROWID tables split at a boundary (`telemetry_state.recent_from`):
`telemetry_raw`, clustered on (series_id, ts) for reading a series, holds the rows before it;
`telemetry_raw_recent`, clustered on (ts, series_id), the rows at or after it. A batch of fresh
points appends to a few pages of the recent table, where in the series table it rewrote a page
per series (ten thousand pages, 40 MB of WAL for 1,500 messages in a store of millions of
points). Every MERGE_INTERVAL_S a write moves the recent rows older than RECENT_WINDOW_MS into
the series table, a page per series for the points since the last merge, and moves the boundary. A point
older than the boundary goes straight to the series table, so each (series, ts) is in one table;
reads take both, in one snapshot.

Replays: raw rows go in with INSERT OR IGNORE; when every row was new (the normal case) the batch
is folded into the rollups incrementally. When some (series, ts) already existed, or repeated
within the batch, the batch is upserted (the last value wins) and the touched buckets are
recomputed from raw, so a replayed point is never counted twice.

Deferred folding (`defer=True`, what the writer process uses): at a steady rate every series
shows up about once per batch, so folding each batch costs three upserts per point (1 min, 1 h,
latest) beside its one insert. A deferring store folds batches whose points are all within
DEFER_WINDOW_MS of its clock into memory and writes the sums at most FLUSH_INTERVAL_S later (a
part per following write, FLUSH_CHUNK_ROWS rows each), all at once when idle, before any read
of latest values or rollups (read-your-writes holds) and before retention, deletes and replays.
Raw rows stay durable at write(); what a crash loses is only the in-memory sums, and the file
says since when they are owed: the first deferring batch after a flush sets `PRAGMA
user_version` (in its own transaction) to the minute the window starts, and the flush sets it
back to 0 (a flush written in parts: to the mark of what was owed since, after the last part).
A writer opening a file with a mark recomputes the rollups and
latest values from raw rows since that minute. An exclusive lock file (`<file>.writer`) held by
the deferring store keeps any other process from doing that while its sums are in memory."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from itertools import chain, repeat
from pathlib import Path
from typing import Any

import orjson

from ecoplat.telemetry.base import SqlTelemetryStore
from ecoplat.telemetry.points import Bucket, Frame, Frames, Point, Sample
from ecoplat.telemetry.query import HOUR_MS, MINUTE_MS, add_sample, encode

# Numbers and text go through separate statements so that no row binds a None: the sqlite3
# module adapts every non-basic parameter (None included) through a failing attribute lookup,
# which cost more than SQLite's own insert (measured with callgrind).
# The numeric rows of a batch go in as multi-row INSERTs of 256 rows (then 128, 64, ... for the
# rest), not as an executemany: the sqlite3 module releases the GIL around every sqlite3_step,
# and with another busy Python thread in the process (the MQTT loop) each row then waits for the
# GIL to come back (measured: ~1 us a row alone, ~1.7 ms a row beside one spinning thread). One
# statement per 256 rows binds its parameters in C and steps once. It also costs half the CPU
# of one INSERT ... SELECT over a JSON array (json_each), which re-parses every row's array
# (measured interleaved on 3,000-row batches: 2.9 vs 6.2 us a row).
_RAW_CHUNK = 256
RAW, RECENT = "telemetry_raw", "telemetry_raw_recent"
_INSERT_NUM = {table: {n: f"INSERT OR IGNORE INTO {table} (series_id, ts, v_num) VALUES "
                          + ", ".join(["(?, ?, ?)"] * n)
                       for n in (256, 128, 64, 32, 16, 8, 4, 2, 1)}
               for table in (RAW, RECENT)}
_INSERT_STR = {table: f"INSERT OR IGNORE INTO {table} (series_id, ts, v_str) VALUES (?, ?, ?)" for table in (RAW, RECENT)}
_UPSERT = {table: (f"INSERT INTO {table} (series_id, ts, v_num, v_str) VALUES (?, ?, ?, ?) "
                   f"ON CONFLICT ({key}) DO UPDATE SET v_num = excluded.v_num, v_str = excluded.v_str")
           for table, key in ((RAW, "series_id, ts"), (RECENT, "ts, series_id"))}


def _insert_numbers(conn: sqlite3.Connection, flat: list[Any], table: str) -> None:
    """(series_id, ts, v_num) rows, flattened, in statements of 256 rows and powers of two."""
    statements = _INSERT_NUM[table]
    i, end = 0, len(flat)
    while i < end:
        n = _RAW_CHUNK
        while n * 3 > end - i:
            n //= 2
        conn.execute(statements[n], flat[i:i + n * 3])
        i += n * 3


_NUMBER_TYPES = frozenset((float, int))
_NAN = float("nan")


def _latest_sql(values: str) -> str:
    # Only a newer (or equal: the last write wins) timestamp moves the latest value.
    return (f"INSERT INTO telemetry_latest (series_id, ts, v_num, v_str) VALUES {values} "
            f"ON CONFLICT (series_id) DO UPDATE SET ts = excluded.ts, v_num = excluded.v_num, "
            f"v_str = excluded.v_str WHERE excluded.ts >= telemetry_latest.ts")


_UPSERT_LATEST_NUM_JSON = (
    "INSERT INTO telemetry_latest (series_id, ts, v_num, v_str) "
    "SELECT value->>0, value->>1, value->>2, NULL FROM json_each(?) WHERE true "
    "ON CONFLICT (series_id) DO UPDATE SET ts = excluded.ts, v_num = excluded.v_num, "
    "v_str = excluded.v_str WHERE excluded.ts >= telemetry_latest.ts")
_UPSERT_LATEST_STR = _latest_sql("(?, ?, NULL, ?)")


def _fold_sql(table: str) -> str:
    return (f"INSERT INTO {table} (series_id, bucket_ts, count, sum, min, max) "
            f"SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5 FROM json_each(?) WHERE true "
            f"ON CONFLICT (series_id, bucket_ts) DO UPDATE SET count = count + excluded.count, "
            f"sum = sum + excluded.sum, min = min(min, excluded.min), max = max(max, excluded.max)")


_FOLD_1M = _fold_sql("telemetry_agg_1m")
_FOLD_1H = _fold_sql("telemetry_agg_1h")
_FOLD_ROW = {t: _fold_sql(t).replace("SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5 "
                                     "FROM json_each(?) WHERE true", "VALUES (?, ?, ?, ?, ?, ?)")
             for t in ("telemetry_agg_1m", "telemetry_agg_1h")}


def _fold(conn: sqlite3.Connection, sql: str, table: str, acc: dict[tuple[int, int], list[Any]]) -> None:
    rows = [(sid, b, *a) for (sid, b), a in acc.items()]
    # JSON has no infinity: a bucket whose sum of huge values overflowed goes in as bound values.
    if all(r[3] - r[3] == 0 for r in rows):
        conn.execute(sql, (orjson.dumps(rows),))
        return
    conn.execute(sql, (orjson.dumps([r for r in rows if r[3] - r[3] == 0]),))
    conn.executemany(_FOLD_ROW[table], [r for r in rows if r[3] - r[3] != 0])


def _fold_now(conn: sqlite3.Connection, minute: dict[tuple[int, int], list[Any]],
              latest: dict[int, tuple[int, Any, bool]]) -> None:
    """Folds minute sums into the 1 min and 1 h rollups and upserts the latest values."""
    hour: dict[tuple[int, int], list[Any]] = {}
    for (sid, b), a in minute.items():
        k = (sid, b - b % HOUR_MS)
        h = hour.get(k)
        if h is None:
            hour[k] = list(a)
        else:
            h[0] += a[0]
            h[1] += a[1]
            h[2] = min(h[2], a[2])
            h[3] = max(h[3], a[3])
    if minute:
        _fold(conn, _FOLD_1M, "telemetry_agg_1m", minute)
        _fold(conn, _FOLD_1H, "telemetry_agg_1h", hour)
    _upsert_latest(conn, latest)


def _upsert_latest(conn: sqlite3.Connection, latest: dict[int, tuple[int, Any, bool]]) -> None:
    conn.execute(_UPSERT_LATEST_NUM_JSON,
                 (orjson.dumps([(sid, ts, v) for sid, (ts, v, num) in latest.items() if num]),))
    texts = [(sid, ts, v) for sid, (ts, v, num) in latest.items() if not num]
    if texts:
        conn.executemany(_UPSERT_LATEST_STR, texts)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _recent(frames: Sequence[Frame], now: int) -> bool:
    """Whether every point of a batch is within DEFER_WINDOW_MS of now (from the start of the
    minute: what a rebuild from the marked minute covers)."""
    stamps = [f[1] for f in frames]
    return (now - DEFER_WINDOW_MS) // MINUTE_MS * MINUTE_MS <= min(stamps) and max(stamps) <= now + DEFER_WINDOW_MS


_RECOMPUTE_1M = ("INSERT INTO telemetry_agg_1m (series_id, bucket_ts, count, sum, min, max) "
                 "SELECT :s, :b, count(v), sum(v), min(v), max(v) FROM ("
                 "SELECT v_num AS v FROM telemetry_raw WHERE series_id = :s AND ts >= :b AND ts < :e "
                 "AND v_num IS NOT NULL UNION ALL "
                 "SELECT v_num FROM telemetry_raw_recent WHERE series_id = :s AND ts >= :b AND ts < :e "
                 "AND v_num IS NOT NULL) HAVING count(v) > 0")
_RECOMPUTE_1H = ("INSERT INTO telemetry_agg_1h (series_id, bucket_ts, count, sum, min, max) "
                 "SELECT series_id, ?, sum(count), sum(sum), min(min), max(max) FROM telemetry_agg_1m "
                 "WHERE series_id = ? AND bucket_ts >= ? AND bucket_ts < ? GROUP BY series_id")


TABLES = ("telemetry_series", "telemetry_raw", "telemetry_latest", "telemetry_agg_1m", "telemetry_agg_1h",
          "telemetry_raw_recent", "telemetry_state")

# Raw points at most this old (by the store's clock) go to the recent table (migration 0007),
# which is merged into telemetry_raw this often. A merge rewrites a page per active series
# whatever the number of rows it moves: every 5 s rather than every second cut the writer's
# CPU at 12,000 msgs/s (with the flush below) from 0.054 to 0.038 ms a message.
RECENT_WINDOW_MS = 10_000
MERGE_INTERVAL_S = 5.0
_MERGE = (
    "INSERT OR REPLACE INTO telemetry_raw (series_id, ts, v_num, v_str) "
    "SELECT series_id, ts, v_num, v_str FROM telemetry_raw_recent WHERE ts < ? ORDER BY series_id, ts",
    "DELETE FROM telemetry_raw_recent WHERE ts < ?",
    "UPDATE telemetry_state SET value = ? WHERE name = 'recent_from'",
)

# Owed sums are written this often (an upsert per active series and bucket, whatever the rate)
# and before any read of them; what a crash loses of them is rebuilt from raw rows.
DEFER_WINDOW_MS = 60_000
FLUSH_INTERVAL_S = 5.0
# A due flush is written over the next transactions, this many rollup and latest rows each: all at
# once it held the writer for 90-180 ms every FLUSH_INTERVAL_S at 18,000 msgs/s (10,000 series),
# the CPU the alarm path then waited for.
FLUSH_CHUNK_ROWS = 1000

# Recovery after a crash of a deferring writer: every bucket from the marked minute on, for all
# series, rebuilt from what is on disk (the join reads each series' raw rows by its key).
_REBUILD = (
    "DELETE FROM telemetry_agg_1m WHERE bucket_ts >= :m",
    "INSERT INTO telemetry_agg_1m (series_id, bucket_ts, count, sum, min, max) "
    "SELECT sid, b, count(v), sum(v), min(v), max(v) FROM ("
    "SELECT r.series_id AS sid, r.ts - r.ts % 60000 AS b, r.v_num AS v "
    "FROM telemetry_series s JOIN telemetry_raw r ON r.series_id = s.id AND r.ts >= :m WHERE r.v_num IS NOT NULL "
    "UNION ALL SELECT series_id, ts - ts % 60000, v_num FROM telemetry_raw_recent "
    "WHERE ts >= :m AND v_num IS NOT NULL) GROUP BY sid, b",
    "DELETE FROM telemetry_agg_1h WHERE bucket_ts >= :h",
    "INSERT INTO telemetry_agg_1h (series_id, bucket_ts, count, sum, min, max) "
    "SELECT a.series_id, a.bucket_ts - a.bucket_ts % 3600000, sum(a.count), sum(a.sum), min(a.min), max(a.max) "
    "FROM telemetry_series s JOIN telemetry_agg_1m a ON a.series_id = s.id AND a.bucket_ts >= :h "
    "GROUP BY a.series_id, a.bucket_ts - a.bucket_ts % 3600000",
    "INSERT INTO telemetry_latest (series_id, ts, v_num, v_str) "
    "SELECT s.id, r.ts, r.v_num, r.v_str FROM telemetry_series s JOIN telemetry_raw r ON r.series_id = s.id "
    "AND r.ts = (SELECT max(ts) FROM telemetry_raw WHERE series_id = s.id AND ts >= :m) WHERE true "
    "ON CONFLICT (series_id) DO UPDATE SET ts = excluded.ts, v_num = excluded.v_num, v_str = excluded.v_str "
    "WHERE excluded.ts >= telemetry_latest.ts",
    # SQLite gives a bare column the values of the row that max() picked.
    "INSERT INTO telemetry_latest (series_id, ts, v_num, v_str) "
    "SELECT series_id, max(ts), v_num, v_str FROM telemetry_raw_recent WHERE ts >= :m GROUP BY series_id "
    "ON CONFLICT (series_id) DO UPDATE SET ts = excluded.ts, v_num = excluded.v_num, v_str = excluded.v_str "
    "WHERE excluded.ts >= telemetry_latest.ts",
)


def telemetry_path(database_path: str) -> str:
    """The telemetry file beside a SQLite database file: `a/ecoplat.db` → `a/ecoplat.telemetry.db`."""
    path = Path(database_path)
    return str(path.with_name(f"{path.stem}.telemetry{path.suffix or '.db'}"))


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA cache_size=-65536")
    conn.execute("PRAGMA temp_store=MEMORY")
    return conn


class SqliteTelemetryStore(SqlTelemetryStore):
    raw_tables = (RAW, RECENT)

    def __init__(self, path: str, *, defer: bool = False) -> None:
        """path: the telemetry file itself (see telemetry_path), made by the migrations.
        defer: fold rollups and latest values in memory between flushes (see the module's doc);
        granted only while no other store in any process holds the file's writer lock."""
        super().__init__()
        if not Path(path).is_file():
            raise FileNotFoundError(f"no telemetry store at {path}: run `ecoplat migrate` to create it")
        self.path = path
        self._conn = _connect(path)
        found = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if missing := [t for t in TABLES if t not in found]:
            self._conn.close()
            raise RuntimeError(f"the telemetry store {path} lacks {', '.join(missing)}: "
                               f"run `ecoplat migrate` to bring it up to date")
        # Checkpoint less often than every 1000 pages: a batch dirties a page per active series,
        # and each checkpoint syncs the database file.
        self._conn.execute("PRAGMA wal_autocheckpoint=10000")
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        # What deferred batches owe the rollups and latest values, and since when.
        self._owed_1m: dict[tuple[int, int], list[Any]] = {}
        self._owed_latest: dict[int, tuple[int, Any, bool]] = {}
        self._owed_since: float | None = None
        self._owed_mark = 0  # the minute the file marks for what is owed (PRAGMA user_version)
        # A flush in progress (see _flush_step): sums taken from the owed ones, to be written.
        self._draining_1m: list[tuple[tuple[int, int], list[Any]]] = []
        self._draining_latest: list[tuple[int, tuple[int, Any, bool]]] = []
        self._flushed = False  # in the open transaction
        self._drained = False  # in the open transaction, some of a flush in progress was written
        self._rebuild_due = False
        self._merged_at = 0.0
        self._lock_fd: int | None = None
        self.defer = False
        try:
            self._claim(defer)
        except BaseException:
            self._conn.close()
            raise

    # -- the writer lock and recovery ---------------------------------------------------------
    def _claim(self, defer: bool) -> None:
        """Takes the writer lock if no one holds it: then sums a crashed deferring writer owed
        are rebuilt, and a deferring store keeps the lock for its life."""
        fd = os.open(self.path + ".writer", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return  # a deferring writer is alive: what it owes is in its memory
        try:
            with self._write_lock:
                self._transaction(self._rebuild)
        except BaseException:
            os.close(fd)
            raise
        if defer:
            self._lock_fd, self.defer = fd, True
        else:
            os.close(fd)

    def _rebuild(self, conn: sqlite3.Connection) -> None:
        """Rollups and latest values from the raw rows since the marked minute, if marked."""
        marked = conn.execute("PRAGMA user_version").fetchone()[0]
        if marked:
            m = marked * MINUTE_MS
            for sql in _REBUILD:
                conn.execute(sql, {"m": m, "h": m - m % HOUR_MS})
            conn.execute("PRAGMA user_version = 0")
        self._rebuild_due = False

    def _transaction(self, work: Any, *args: Any) -> Any:
        """work(conn, *args) in one write transaction (under the write lock). On failure the
        deferred sums are dropped and rebuilt from the file before the next write."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        self._flushed = self._drained = False
        try:
            if self._rebuild_due:
                self._rebuild(conn)
            result = work(conn, *args)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            # Series ids created in the rolled-back transaction no longer exist.
            self._series.clear()
            if self._owed_since is not None or self._flushed or self._drained or self._draining():
                self._owed_1m, self._owed_latest, self._owed_since = {}, {}, None
                self._draining_1m, self._draining_latest = [], []
                self._rebuild_due = True
            raise
        if self._flushed:
            self._owed_1m, self._owed_latest, self._owed_since = {}, {}, None
            self._draining_1m, self._draining_latest = [], []
        return result

    # -- deferred folding ---------------------------------------------------------------------
    def _draining(self) -> bool:
        return bool(self._draining_1m or self._draining_latest)

    def _flush_owed(self, conn: sqlite3.Connection) -> None:
        """Writes everything deferred batches owe, a flush in progress included (cleared once
        the transaction commits)."""
        if (self._owed_since is None and not self._draining()) or self._flushed:
            return
        # Sums add up and latest values keep the newest: the two parts go in one after the other.
        _fold_now(conn, dict(self._draining_1m), dict(self._draining_latest))
        _fold_now(conn, self._owed_1m, self._owed_latest)
        conn.execute("PRAGMA user_version = 0")
        self._flushed = True

    def _flush_step(self, conn: sqlite3.Connection) -> None:
        """A flush that came due, written FLUSH_CHUNK_ROWS rollup and latest rows per transaction:
        the first step takes what is owed (later batches owe afresh), each writes a part. The
        file's mark stays on the oldest sums not yet written until the last part, which marks
        what has been owed since (0 for nothing)."""
        if not self._draining():
            if self._owed_since is None:
                return
            self._draining_1m, self._draining_latest = list(self._owed_1m.items()), list(self._owed_latest.items())
            self._owed_1m, self._owed_latest, self._owed_since = {}, {}, None
        n = FLUSH_CHUNK_ROWS
        minute, latest = dict(self._draining_1m[-n:]), dict(self._draining_latest[-n:])
        del self._draining_1m[-n:], self._draining_latest[-n:]
        _fold_now(conn, minute, latest)
        self._drained = True
        if not self._draining():
            conn.execute(f"PRAGMA user_version = {self._owed_mark if self._owed_since is not None else 0:d}")

    def flush(self) -> None:
        """Writes what deferred batches owe now (reads, idle time and close call it)."""
        if (self._owed_since is None and not self._draining()) or self._closed:
            return
        with self._write_lock:
            if self._owed_since is not None or self._draining():
                self._transaction(self._flush_owed)

    def idle(self) -> None:
        """What an idle writer catches up on: owed sums, and the recent table's merge (only when
        rows have aged: an idle platform writes nothing)."""
        self.flush()
        if self._closed or not self._merge_due():
            return
        self._merged_at = time.monotonic()
        with self._write_lock:
            aged = self._conn.execute("SELECT 1 FROM telemetry_raw_recent WHERE ts < ? LIMIT 1",
                                      (_now_ms() - RECENT_WINDOW_MS,)).fetchone()
            if aged is not None:
                self._transaction(self._merge_recent)

    def _owe(self, conn: sqlite3.Connection, now: int) -> None:
        """Before a batch adds to what is owed: the file says from when sums may be owed, in
        the transaction that first owes them."""
        if self._owed_since is None:
            self._owed_mark = (now - DEFER_WINDOW_MS) // MINUTE_MS
            if not self._draining():  # else the file still marks the older sums being written
                conn.execute(f"PRAGMA user_version = {self._owed_mark:d}")
            self._owed_since = time.monotonic()

    # -- the recent table -------------------------------------------------------------------------
    @staticmethod
    def _recent_from(conn: sqlite3.Connection) -> int:
        """The boundary: raw rows at or after it are in the recent table, older ones not."""
        return int(conn.execute("SELECT value FROM telemetry_state WHERE name = 'recent_from'").fetchone()[0])

    def _merge_due(self) -> bool:
        return time.monotonic() - self._merged_at >= MERGE_INTERVAL_S

    def _merge_recent(self, conn: sqlite3.Connection) -> None:
        """Moves the recent rows older than RECENT_WINDOW_MS into telemetry_raw (one page write
        per series for everything since the last merge) and moves the boundary past them."""
        self._merged_at = time.monotonic()
        before = self._recent_from(conn)
        after = max(before, _now_ms() - RECENT_WINDOW_MS)
        if after > before:
            for sql in _MERGE:
                conn.execute(sql, (after,))

    def _write_and_merge(self, conn: sqlite3.Connection, points: Sequence[Point],
                         enterprise_of: Mapping[int, int]) -> None:
        self._write_batch(conn, points, enterprise_of)
        if self._merge_due():
            self._merge_recent(conn)

    def latest(self, device_id: int, keys: Sequence[str] | None = None) -> dict[str, Sample]:
        self.flush()
        return super().latest(device_id, keys)

    def aggregate(self, device_id: int, keys: Sequence[str], start_ms: int, end_ms: int,
                  interval_ms: int) -> dict[str, list[Bucket]]:
        self.flush()
        return super().aggregate(device_id, keys, start_ms, end_ms, interval_ms)

    @contextlib.contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # One connection per reading thread: WAL lets readers run beside the writer.
            conn = _connect(self.path)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        if conn.in_transaction:
            yield conn
            return
        # One snapshot for everything read here: a merge of the recent table in between would
        # otherwise show a point twice or not at all.
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            with self._write_lock:
                self._conn.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the writer lock
                self._lock_fd = None
        with self._readers_lock:
            for conn in self._readers:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._readers.clear()

    # -- write ------------------------------------------------------------------------------
    def write(self, points: Sequence[Point], enterprise_of: Mapping[int, int]) -> None:
        if not points:
            return
        with self._write_lock:
            self._transaction(self._write_and_merge, points, enterprise_of)

    def _write_batch(self, conn: sqlite3.Connection, points: Sequence[Point],
                     enterprise_of: Mapping[int, int]) -> None:
        nums: list[Any] = []  # (series_id, ts, v_num) rows, flattened: telemetry_raw
        recent_nums: list[Any] = []  # the same for telemetry_raw_recent
        texts: list[tuple[int, int, str]] = []
        add_text = texts.append
        frames = points.frames if type(points) is Frames else [(d, ts, {k: v}) for d, k, ts, v in points]
        now = _now_ms()
        # A deferring store adds a batch whose points are all recent (see _recent) straight to
        # what it owes: a second pass merging a batch's sums into them cost as much as making
        # them (a fifth of the writer's CPU at 12,000 messages a second, one frame per device
        # and batch). If the batch then turns out to replay points, the buckets it touched are
        # recomputed from raw rows anyway (_replay).
        deferring = self.defer and bool(frames) and _recent(frames, now)
        if deferring:
            self._owe(conn, now)
            minute, latest = self._owed_1m, self._owed_latest
        else:
            minute, latest = {}, {}  # (series_id, bucket) -> [count, sum, min, max]; series_id -> (ts, value, is_number)
        last_dev: int | None = None

        def load(device_id: int) -> tuple[int | None, dict[str, int]]:
            found = conn.execute("SELECT key, id, enterprise_id FROM telemetry_series WHERE device_id = ?",
                                 (device_id,)).fetchall()
            return (found[0][2] if found else None), {k: sid for k, sid, _ in found}

        def move(device_id: int, enterprise_id: int) -> None:
            conn.execute("UPDATE telemetry_series SET enterprise_id = ? WHERE device_id = ?",
                         (enterprise_id, device_id))

        # Frames (one device's values at one instant) of one device, with the same keys, in the
        # same minute are stacked into a group. Transposed with zip, a group's columns are its
        # series: rollups and latest values come from C builtins (sum, min, max) and raw rows
        # from zip, so the usual all-numbers frame costs no Python step per point. Text,
        # booleans and non-finite numbers go value by value.
        groups: dict[tuple[int, int, tuple[str, ...]], tuple[list[int], list[tuple[float, ...]]]] = {}
        for dev, ts, values in frames:
            if dev != last_dev:
                last_dev = dev
                self._resolve_device(dev, enterprise_of, load, move)
            vals = tuple(values.values())
            types = set(map(type, vals))
            if types <= _NUMBER_TYPES:
                try:
                    if int in types:
                        vals = tuple(map(float, vals))  # a uint64 would not bind as an SQLite integer
                    total = sum(vals)
                except OverflowError:
                    total = _NAN
                if total - total == 0:  # all finite (a sum that overflowed goes value by value)
                    gk = (dev, ts - ts % MINUTE_MS, tuple(values))
                    g = groups.get(gk)
                    if g is None:
                        groups[gk] = ([ts], [vals])
                    else:
                        g[0].append(ts)
                        g[1].append(vals)
                    continue
            for key, v in values.items():
                t = type(v)
                if t is float or t is int:
                    with contextlib.suppress(OverflowError):
                        v = float(v)
                        if v - v == 0:  # finite
                            gk = (dev, ts - ts % MINUTE_MS, (key,))
                            g = groups.get(gk)
                            if g is None:
                                groups[gk] = ([ts], [(v,)])
                            else:
                                g[0].append(ts)
                                g[1].append((v,))
                            continue
                sid = self._series_id(conn, dev, key)
                text = encode(v)[1]
                add_text((sid, ts, text))
                cur = latest.get(sid)
                if cur is None or ts >= cur[0]:
                    latest[sid] = (ts, text, False)
        # Points at or after the boundary go to the recent table, older ones to the series table.
        recent_from = self._recent_from(conn)
        extend_num, extend_recent = nums.extend, recent_nums.extend
        for (dev, bucket, keyt), (tss, rows) in groups.items():
            sids = [self._series_id(conn, dev, k) for k in keyt]
            if bucket >= recent_from or min(tss) >= recent_from:
                for ts, row in zip(tss, rows, strict=True):
                    extend_recent(chain.from_iterable(zip(sids, repeat(ts), row)))
            else:
                for ts, row in zip(tss, rows, strict=True):
                    (extend_recent if ts >= recent_from else extend_num)(chain.from_iterable(zip(sids, repeat(ts), row)))
            n = len(rows)
            if n == 1:  # the usual group at moderate rates: one frame, no columns to fold
                ts = tss[0]
                for sid, v in zip(sids, rows[0], strict=True):
                    add_sample(minute, (sid, bucket), v)
                    cur = latest.get(sid)
                    if cur is None or ts >= cur[0]:
                        latest[sid] = (ts, v, True)
                continue
            hi = max(tss)
            # The last frame at the newest timestamp wins, as it would written one by one.
            i = n - 1 if tss[-1] == hi else n - 1 - tss[::-1].index(hi)
            for sid, col in zip(sids, zip(*rows, strict=True), strict=True):
                a = minute.get((sid, bucket))
                if a is None:
                    minute[(sid, bucket)] = [n, sum(col), min(col), max(col)]
                else:
                    a[0] += n
                    a[1] += sum(col)
                    a[2] = min(a[2], *col)
                    a[3] = max(a[3], *col)
                cur = latest.get(sid)
                if cur is None or hi >= cur[0]:
                    latest[sid] = (hi, col[i], True)

        before = conn.total_changes
        _insert_numbers(conn, nums, RAW)
        _insert_numbers(conn, recent_nums, RECENT)
        if texts:
            conn.executemany(_INSERT_STR[RAW], [t for t in texts if t[1] < recent_from])
            conn.executemany(_INSERT_STR[RECENT], [t for t in texts if t[1] >= recent_from])
        if conn.total_changes - before == (len(nums) + len(recent_nums)) // 3 + len(texts):
            if not deferring:
                _fold_now(conn, minute, latest)
            # Whichever way this batch went, sums owed for FLUSH_INTERVAL_S are written now, a
            # part per transaction (_flush_step).
            if self._draining() or (self._owed_since is not None
                                    and time.monotonic() - self._owed_since >= FLUSH_INTERVAL_S):
                self._flush_step(conn)
            return
        # Some points existed: the touched buckets are rebuilt from raw rows, which already
        # hold what deferred batches owe, so that is written first.
        self._flush_owed(conn)
        rows = self._ordered_rows(points)
        self._replay(conn, rows)
        # Repeated (series, ts) within the batch: the latest value is the last one written.
        latest = {}
        for sid, ts, vn, vs in rows:
            cur = latest.get(sid)
            if cur is None or ts >= cur[0]:
                latest[sid] = (ts, vs, False) if vn is None else (ts, vn, True)
        _upsert_latest(conn, latest)

    def _ordered_rows(self, points: Sequence[Point]) -> list[tuple[int, int, float | None, str | None]]:
        """The batch as (series_id, ts, v_num, v_str) in its own order (every series is known by
        now), for the replay path where the last of repeated points must win."""
        by_device = self._series.by_device
        return [(by_device[p.device_id][1][p.key], p.ts, *encode(p.value)) for p in points]

    def _replay(self, conn: sqlite3.Connection, rows: list[tuple[int, int, float | None, str | None]]) -> None:
        """Some points already existed: apply the batch as upserts and recompute every touched
        bucket from raw (minutes) and from the minutes (hours)."""
        recent_from = self._recent_from(conn)
        conn.executemany(_UPSERT[RAW], [r for r in rows if r[1] < recent_from])
        conn.executemany(_UPSERT[RECENT], [r for r in rows if r[1] >= recent_from])
        minutes = {(sid, ts - ts % MINUTE_MS) for sid, ts, _, _ in rows}
        hours = {(sid, b - b % HOUR_MS) for sid, b in minutes}
        conn.executemany("DELETE FROM telemetry_agg_1m WHERE series_id = ? AND bucket_ts = ?", minutes)
        conn.executemany(_RECOMPUTE_1M, [{"s": sid, "b": b, "e": b + MINUTE_MS} for sid, b in minutes])
        conn.executemany("DELETE FROM telemetry_agg_1h WHERE series_id = ? AND bucket_ts = ?", hours)
        conn.executemany(_RECOMPUTE_1H, [(b, sid, b, b + HOUR_MS) for sid, b in hours])

    def _series_id(self, conn: sqlite3.Connection, device_id: int, key: str) -> int:
        """The series id of a device's key, created on first sight (the device is resolved)."""
        keys = self._series.by_device[device_id][1]
        sid = keys.get(key)
        if sid is None:
            sid = keys[key] = self._create_series(conn, device_id, key)
        return sid

    def _create_series(self, conn: sqlite3.Connection, device_id: int, key: str) -> int:
        enterprise_id = self._series.by_device[device_id][0]
        conn.execute("INSERT INTO telemetry_series (enterprise_id, device_id, key) VALUES (?, ?, ?) "
                     "ON CONFLICT (device_id, key) DO NOTHING", (enterprise_id, device_id, key))
        return conn.execute("SELECT id FROM telemetry_series WHERE device_id = ? AND key = ?",
                            (device_id, key)).fetchone()[0]

    # -- retention --------------------------------------------------------------------------
    def apply_retention(self, enterprise_id: int, older_than_ms: int) -> int:
        """Deletes the enterprise's raw points and minute rollups older than the cutoff, a
        few series per transaction so ingest is never held up for long. Hour rollups stay for
        long-range charts."""
        with self._reader() as conn:
            sids = [r[0] for r in conn.execute(
                "SELECT id FROM telemetry_series WHERE enterprise_id = ? ORDER BY id", (enterprise_id,))]
        deleted = 0

        def delete(conn: sqlite3.Connection, chunk: list[int]) -> int:
            self._flush_owed(conn)  # owed sums of these series must not land after the delete
            marks = ", ".join("?" * len(chunk))
            n = sum(conn.execute(f"DELETE FROM {table} WHERE series_id IN ({marks}) AND ts < ?",
                                 (*chunk, older_than_ms)).rowcount for table in (RAW, RECENT))
            conn.execute(f"DELETE FROM telemetry_agg_1m WHERE series_id IN ({marks}) AND bucket_ts <= ?",
                         (*chunk, older_than_ms - MINUTE_MS))
            return int(n)

        for i in range(0, len(sids), 200):
            with self._write_lock:
                deleted += self._transaction(delete, sids[i:i + 200])
        return deleted

    def delete_device(self, device_id: int) -> int:
        """Deletes every series of the device with its points, rollups and latest values (a
        deleted device's id must not hand its history to a device created later). Returns the
        number of raw points deleted."""

        def delete(conn: sqlite3.Connection) -> int:
            self._flush_owed(conn)  # owed sums of its series must not land after the delete
            sids = [r[0] for r in conn.execute("SELECT id FROM telemetry_series WHERE device_id = ?",
                                               (device_id,))]
            marks = ", ".join("?" * len(sids))
            deleted = 0
            if sids:
                deleted = sum(conn.execute(f"DELETE FROM {table} WHERE series_id IN ({marks})", sids).rowcount
                              for table in (RAW, RECENT))
                for table in ("telemetry_agg_1m", "telemetry_agg_1h", "telemetry_latest"):
                    conn.execute(f"DELETE FROM {table} WHERE series_id IN ({marks})", sids)
                conn.execute("DELETE FROM telemetry_series WHERE device_id = ?", (device_id,))
            return int(deleted)

        with self._write_lock:
            try:
                return int(self._transaction(delete))
            finally:
                self._series.by_device.pop(device_id, None)
