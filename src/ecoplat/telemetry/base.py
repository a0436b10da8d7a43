"""What the SQLite and PostgreSQL stores share: the series dictionary cache and the read queries
(latest, raw ranges, aggregates from the best rollup, keys). The backends differ in how they
connect and in their write and retention paths."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from ecoplat.telemetry.points import Bucket, Point, Sample
from ecoplat.telemetry.query import HOUR_MS, MINUTE_MS, RAW, decode, merge_partials, plan_segments

_ROLLUP_TABLE = {HOUR_MS: "telemetry_agg_1h", MINUTE_MS: "telemetry_agg_1m"}


class SeriesCache:
    """device_id -> (enterprise_id, {key: series_id}). Only the writer touches it, under its lock."""

    def __init__(self) -> None:
        self.by_device: dict[int, tuple[int, dict[str, int]]] = {}

    def clear(self) -> None:
        self.by_device.clear()


class SqlTelemetryStore(ABC):
    """Read side shared by both backends. `_reader()` yields a DB-API connection whose
    `execute(sql, params)` returns a cursor; SQL is written with '?' and translated."""

    placeholder = "?"
    # The tables raw points live in (SQLite keeps recent ones apart: migration 0007).
    raw_tables: tuple[str, ...] = ("telemetry_raw",)

    def __init__(self) -> None:
        self._write_lock = threading.Lock()
        self._series = SeriesCache()

    # -- backend hooks ------------------------------------------------------------------
    @abstractmethod
    def _reader(self) -> AbstractContextManager[Any]: ...

    @abstractmethod
    def write(self, points: Sequence[Point], enterprise_of: Mapping[int, int]) -> None: ...

    @abstractmethod
    def apply_retention(self, enterprise_id: int, older_than_ms: int) -> int: ...

    @abstractmethod
    def delete_device(self, device_id: int) -> int: ...

    @abstractmethod
    def close(self) -> None: ...

    def flush(self) -> None:  # noqa: B027 - a hook: only stores that put writes off override it
        """Writes what the store put off (SQLite's deferred rollups); reads see it afterwards."""

    def _sql(self, sql: str) -> str:
        if self.placeholder == "?":
            return sql
        return sql.replace("%", "%%").replace("?", self.placeholder)

    def _rows(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._reader() as conn:
            return list(conn.execute(self._sql(sql), params).fetchall())

    # -- reads --------------------------------------------------------------------------
    def series_of(self, device_id: int, keys: Sequence[str] | None = None) -> dict[str, int]:
        rows = self._rows("SELECT key, id FROM telemetry_series WHERE device_id = ?", (device_id,))
        out = {k: sid for k, sid in rows}
        if keys is not None:
            wanted = set(keys)
            out = {k: sid for k, sid in out.items() if k in wanted}
        return out

    def keys(self, device_id: int) -> list[str]:
        return sorted(self.series_of(device_id))

    def latest(self, device_id: int, keys: Sequence[str] | None = None) -> dict[str, Sample]:
        rows = self._rows(
            "SELECT s.key, l.ts, l.v_num, l.v_str FROM telemetry_series s "
            "JOIN telemetry_latest l ON l.series_id = s.id WHERE s.device_id = ?", (device_id,))
        wanted = set(keys) if keys is not None else None
        return {k: Sample(ts, decode(vn, vs)) for k, ts, vn, vs in rows
                if wanted is None or k in wanted}

    def range(self, device_id: int, keys: Sequence[str], start_ms: int, end_ms: int,
              limit: int = 10_000, *, newest_first: bool = False) -> dict[str, list[Sample]]:
        """Raw points of each key with start <= ts < end, at most `limit` per key: the oldest
        first, or with newest_first the most recent `limit` points, newest first (charts)."""
        out: dict[str, list[Sample]] = {}
        sql = ("SELECT ts, v_num, v_str FROM {} WHERE series_id = ? AND ts >= ? AND ts < ? "
               f"ORDER BY ts {'DESC' if newest_first else 'ASC'} LIMIT ?")
        series = self.series_of(device_id, keys)
        with self._reader() as conn:
            for key in keys:
                sid = series.get(key)
                if sid is None:
                    out[key] = []
                    continue
                rows: list[Any] = []
                for table in self.raw_tables:
                    rows += conn.execute(self._sql(sql.format(table)), (sid, start_ms, end_ms, limit)).fetchall()
                if len(self.raw_tables) > 1:  # a (series, ts) is in one table only
                    rows.sort(key=lambda r: r[0], reverse=newest_first)
                    del rows[limit:]
                out[key] = [Sample(ts, decode(vn, vs)) for ts, vn, vs in rows]
        return out

    def iter_range(self, device_id: int, key: str, start_ms: int, end_ms: int,
                   page: int = 5_000) -> Iterator[Sample]:
        """All raw points of one key in [start, end), read page by page (for streamed exports)."""
        while start_ms < end_ms:
            samples = self.range(device_id, [key], start_ms, end_ms, limit=page)[key]
            yield from samples
            if len(samples) < page:
                return
            start_ms = samples[-1].ts + 1

    def aggregate(self, device_id: int, keys: Sequence[str], start_ms: int, end_ms: int,
                  interval_ms: int) -> dict[str, list[Bucket]]:
        """avg/min/max/count/sum of numeric values per interval (buckets aligned to the epoch,
        empty buckets left out), taken from the 1 h and 1 min rollups where they fit and from
        raw rows only for the ragged edges."""
        series = self.series_of(device_id, keys)
        out: dict[str, list[Bucket]] = {k: [] for k in keys}
        if not series:
            return out
        sids = list(series.values())
        marks = ", ".join("?" * len(sids))
        partials: list[tuple[int, int, int, float, float, float]] = []
        with self._reader() as conn:
            for level, s, e in plan_segments(start_ms, end_ms, interval_ms):
                if level == RAW:
                    for table in self.raw_tables:
                        sql = (f"SELECT series_id, ts - ts % ? AS b, count(v_num), sum(v_num), min(v_num), "
                               f"max(v_num) FROM {table} WHERE series_id IN ({marks}) AND ts >= ? "
                               f"AND ts < ? AND v_num IS NOT NULL GROUP BY series_id, b")
                        partials.extend(conn.execute(self._sql(sql), (interval_ms, *sids, s, e)).fetchall())
                    continue
                sql = (f"SELECT series_id, bucket_ts - bucket_ts % ? AS b, sum(count), sum(sum), "
                       f"min(min), max(max) FROM {_ROLLUP_TABLE[level]} WHERE series_id IN ({marks}) "
                       f"AND bucket_ts >= ? AND bucket_ts < ? GROUP BY series_id, b")
                partials.extend(conn.execute(self._sql(sql), (interval_ms, *sids, s, e)).fetchall())
        by_sid = merge_partials(partials)
        for key, sid in series.items():
            out[key] = by_sid.get(sid, [])
        return out

    # -- write helpers shared by the backends -----------------------------------------------
    def _resolve_device(self, device_id: int, enterprise_of: Mapping[int, int],
                        load: Callable[[int], tuple[int | None, dict[str, int]]],
                        move: Callable[[int, int], None]) -> dict[str, int]:
        """The device's {key: series_id} (loaded once), keeping its enterprise current: a claimed
        device changes owner, and retention must follow the owner."""
        cached = self._series.by_device.get(device_id)
        enterprise_id = enterprise_of.get(device_id)
        if enterprise_id is None:
            if cached is None:
                raise ValueError(f"no enterprise given for device {device_id}")
            enterprise_id = cached[0]
        if cached is None:
            stored_enterprise, series = load(device_id)
            if stored_enterprise is not None and stored_enterprise != enterprise_id:
                move(device_id, enterprise_id)
            cached = (enterprise_id, series)
            self._series.by_device[device_id] = cached
        elif cached[0] != enterprise_id:
            move(device_id, enterprise_id)
            cached = (enterprise_id, cached[1])
            self._series.by_device[device_id] = cached
        return cached[1]
