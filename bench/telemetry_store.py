"""Write throughput of the telemetry store alone (no broker, no ingest queue), against a bare
baseline measured in the same run on the same rows.

    python -m bench.telemetry_store [--backends sqlite,postgres] [--points 300000]
                                    [--series 1000] [--batches 100,5000]

Workload: gateway-style batches (devices x keys at one timestamp each), `--series` distinct
series in rotation, timestamps moving forward. For each backend and batch size it prints the
store's points/s (raw rows + latest + 1 min and 1 h rollups, one transaction per batch) and the
baseline: a bare `executemany` of the same (series_id, ts, value) rows into an unindexed table,
one transaction per batch (PostgreSQL also: a bare COPY). For SQLite it also prints both rates
per CPU second of the process (`*_cpu_s`, `ratio_cpu`): on a shared machine the wall rates swing
with the neighbours' load, the CPU rates measure the write path's own cost. The last stdout line
is one JSON object.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import print_final_json
from ecoplat.migrations_runner import upgrade
from ecoplat.telemetry.points import Point
from ecoplat.telemetry.store import open_store

T0 = 1_764_201_600_000
KEYS_PER_DEVICE = 10
POSTGRES_ADMIN_URL = os.environ.get("ECOPLAT_TEST_POSTGRES_URL",
                                    "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def workload(total: int, series: int, batch: int) -> list[list[Point]]:
    """Batches of `batch` points: whole devices (10 keys each) at one timestamp, devices taken in
    rotation so that `series` series are written round-robin."""
    devices = max(1, series // KEYS_PER_DEVICE)
    per_batch_devices = max(1, batch // KEYS_PER_DEVICE)
    out: list[list[Point]] = []
    n = 0
    cursor = 0
    while n < total:
        pts: list[Point] = []
        for _ in range(per_batch_devices):
            dev = 1 + cursor % devices
            ts = T0 + (cursor // devices) * 1000
            cursor += 1
            pts.extend(Point(dev, f"k{k}", ts, (cursor * 7 + k) % 1000 / 10) for k in range(KEYS_PER_DEVICE))
        out.append(pts)
        n += len(pts)
    return out


def _rows(batches: list[list[Point]]) -> list[list[tuple[int, int, float]]]:
    return [[(p.device_id * 100 + int(p.key[1:]), p.ts, p.value) for p in b] for b in batches]  # type: ignore[misc]


def _timed(fn: Any, batches: list[Any]) -> float:
    return _timed_cpu(fn, batches)[0]


def _timed_cpu(fn: Any, batches: list[Any]) -> tuple[float, float]:
    """(points per wall second, points per CPU second of this process). On a shared, loaded
    machine the wall rate swings with the neighbours' load; the CPU rate measures the write
    path's own cost (the database engine runs in this process) and moves far less."""
    start, cpu_start = time.perf_counter(), time.process_time()
    for b in batches:
        fn(b)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    n = sum(len(b) for b in batches)
    return n / elapsed, n / max(cpu, 1e-9)


def bench_sqlite(batches: list[list[Point]], workdir: Path) -> dict[str, float]:
    url = f"sqlite:///{workdir / f'store-{secrets.token_hex(3)}.db'}"
    upgrade(url)
    store = open_store(url)
    enterprise_of = {p.device_id: 1 for b in batches for p in b}
    store_rate, store_cpu = _timed_cpu(lambda b: store.write(b, enterprise_of), batches)
    store.close()

    path = workdir / f"bare-{secrets.token_hex(3)}.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE bare (series_id INTEGER, ts INTEGER, v REAL)")
    rows = _rows(batches)

    def bare(b: list[tuple[int, int, float]]) -> None:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO bare VALUES (?, ?, ?)", b)
        conn.execute("COMMIT")

    base_rate, base_cpu = _timed_cpu(bare, rows)
    conn.close()
    return {"store_points_s": round(store_rate), "baseline_executemany_points_s": round(base_rate),
            "ratio": round(store_rate / base_rate, 3),
            "store_points_cpu_s": round(store_cpu), "baseline_executemany_points_cpu_s": round(base_cpu),
            "ratio_cpu": round(store_cpu / base_cpu, 3)}


def bench_postgres(batches: list[list[Point]]) -> dict[str, float]:
    import psycopg
    from sqlalchemy import create_engine, text

    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"ecoplat_bench_{secrets.token_hex(3)}"
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        upgrade(url)
        store = open_store(url)
        enterprise_of = {p.device_id: 1 for b in batches for p in b}
        store_rate = _timed(lambda b: store.write(b, enterprise_of), batches)
        store.close()
        rows = _rows(batches)
        with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
            conn.execute("CREATE UNLOGGED TABLE IF NOT EXISTS bare (series_id int, ts bigint, v float8)")
            conn.execute("ALTER TABLE bare SET LOGGED")
            conn.commit()

            def bare(b: list[tuple[int, int, float]]) -> None:
                with conn.cursor() as cur:
                    cur.executemany("INSERT INTO bare VALUES (%s, %s, %s)", b)
                conn.commit()

            def bare_copy(b: list[tuple[int, int, float]]) -> None:
                with conn.cursor() as cur, cur.copy("COPY bare (series_id, ts, v) FROM STDIN") as copy:
                    for r in b:
                        copy.write_row(r)
                conn.commit()

            base_rate = _timed(bare, rows)
            copy_rate = _timed(bare_copy, rows)
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return {"store_points_s": round(store_rate), "baseline_executemany_points_s": round(base_rate),
            "baseline_copy_points_s": round(copy_rate), "ratio": round(store_rate / base_rate, 3),
            "ratio_copy": round(store_rate / copy_rate, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--points", type=int, default=300_000)
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--batches", default="100,5000,20000", help="batch sizes in points, comma separated")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ecoplat-bench-store-"))
    workdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"benchmark": "telemetry_store", "points": args.points, "series": args.series,
                              "backends": {}}
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        result["backends"][backend] = {}
        for size in [int(s) for s in args.batches.split(",")]:
            batches = workload(args.points, args.series, size)
            figures = bench_sqlite(batches, workdir) if backend == "sqlite" else bench_postgres(batches)
            result["backends"][backend][f"batch_{size}"] = figures
            print(f"{backend:8} batch {size:5}: {figures}", file=sys.stderr)
    print_final_json(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
