"""`ecoplat bench tenancy`: the enterprise list, search and detail endpoints at 100,000 tenants.

For each backend (SQLite, PostgreSQL) it
  1. seeds a fresh migrated database with bulk inserts (bench/_seed.py), with a progress bar;
  2. starts the platform as `ecoplat serve` does, in a subprocess on a free port (MQTT off);
  3. signs in as a platform admin at /api/auth/token and walks the whole list once with the
     largest page size to collect start points spread over all 100k rows;
  4. drives a steady, fixed-concurrency load from a SEPARATE process (this module run as
     `python -m bench.tenancy _loadgen SPEC`): keyset-paged list walks starting deep in the list,
     name-fragment search and detail lookups, in equal shares;
  5. measures the baseline in the same run with the same load generator: the same queries
     straight on the database (SQLAlchemy Core, no HTTP, no ORM, no auth) and a bare Starlette
     route under the same uvicorn (the HTTP floor);
  6. prints p50/p95/p99 and throughput per endpoint, the ratio
     api_p95 / (db_p95 + http_floor_p95), the query plans, and ONE JSON object last on stdout.

Target (issue 2): p95 under 50 ms on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.table import Table

from bench._common import (
    console,
    free_port,
    latency_summary,
    make_progress,
    print_final_json,
    wait_for_http,
)

ROOT = Path(__file__).resolve().parents[1]
TARGET_P95_MS = 50.0
ENDPOINTS = ("list", "search", "detail")
PAGE_SIZE = 50


# ============================================================================ baseline queries
# The same statements the tenancy service runs for the three endpoints, written as plain SQL so
# the baseline measures the database alone. Keep them in step with ecoplat/tenancy/service.py.

ENTERPRISE_COLUMNS = "id, name, country, isic_class, size_class, timezone, limits, created_at, updated_at"
# enterprise_view_dicts(): each answer carries the enterprises' memberships, one IN query per page.
MEMBERSHIP_SQL = ("SELECT id, ecosystem_id, enterprise_id, role, created_at, updated_at FROM ecosystem_memberships "
                  "WHERE enterprise_id IN ({ids}) ORDER BY id")


def baseline_sql(dialect: str) -> dict[str, str]:
    """name -> SQL with named parameters (:id, :q, :limit, ...) for one dialect; the list is
    keyset paginated on id (pagination.paginate with key=(Enterprise.id,)). The search runs as
    search_rows() does."""
    first = f"SELECT {ENTERPRISE_COLUMNS} FROM enterprises ORDER BY id LIMIT :limit"
    after = f"SELECT {ENTERPRISE_COLUMNS} FROM enterprises WHERE id > :id ORDER BY id LIMIT :limit"
    detail = f"SELECT {ENTERPRISE_COLUMNS} FROM enterprises WHERE id = :id"
    out = {"list_first": first, "list_after": after, "detail": detail}
    if dialect == "sqlite":
        # The FTS5 index read in rowid (= id) order, stopping after :limit hits.
        columns = ", ".join(f"e.{c.strip()}" for c in ENTERPRISE_COLUMNS.split(","))
        out["search"] = (f"SELECT {columns} FROM enterprises e JOIN enterprises_fts ON enterprises_fts.rowid = e.id "
                         f"WHERE enterprises_fts MATCH :q ORDER BY enterprises_fts.rowid LIMIT :limit")
    else:
        # tenancy.search: primary-key windows first, the trigram index for terms rare past them.
        out["search_window"] = (f"SELECT {ENTERPRISE_COLUMNS} FROM (SELECT * FROM enterprises WHERE id > :after "
                                f"ORDER BY id LIMIT :window) walked WHERE name ILIKE :q ESCAPE '\\' "
                                f"ORDER BY id LIMIT :limit")
        out["search_window_end"] = ("SELECT (SELECT id FROM enterprises WHERE id > :after ORDER BY id "
                                    "OFFSET :skip LIMIT 1), (SELECT max(id) FROM enterprises)")
        out["search_index"] = (f"SELECT {ENTERPRISE_COLUMNS} FROM enterprises WHERE name ILIKE :q ESCAPE '\\' "
                               f"AND id > :after ORDER BY id + 0 LIMIT :limit")
        out["search_index_after_window"] = (
            f"SELECT {ENTERPRISE_COLUMNS} FROM enterprises WHERE name ILIKE :q ESCAPE '\\' AND id > "
            f"(SELECT w.id FROM enterprises w WHERE w.id > :after ORDER BY w.id OFFSET :skip LIMIT 1) "
            f"ORDER BY id + 0 LIMIT :limit")
    return out


def search_rows(conn: Any, sql: dict[str, Any], dialect: str, q: str, limit: int) -> tuple[list[Any], str]:
    """The first page of a name search as the tenancy service reads it (ids start at 1, so the
    first window starts after 0), and how it was read."""
    if dialect == "sqlite":
        return list(conn.execute(sql["search"], {"q": q, "limit": limit}).all()), "fts index"
    from ecoplat.tenancy import search

    window = limit * search.FIRST_WINDOW_ROWS_PER_ROW
    rows = list(conn.execute(sql["search_window"], {"q": q, "after": 0, "window": window, "limit": limit}).all())
    path, after = "first window", 0
    if rows and len(rows) < limit:
        end, last = conn.execute(sql["search_window_end"], {"after": 0, "skip": window - 1}).one()
        if end is None:
            return rows, path
        if not search.walking_on_is_cheaper(found=len(rows), walked=window, missing=limit - len(rows),
                                            rest=(last or 0) - end):
            rows += conn.execute(sql["search_index"], {"q": q, "after": end, "limit": limit - len(rows)}).all()
            return rows, path + " + trigram index"
        path, after, window = "second window", end, search.SECOND_WINDOW_MAX_ROWS
        rows += conn.execute(sql["search_window"], {"q": q, "after": after, "window": window,
                                                    "limit": limit - len(rows)}).all()
    if len(rows) < limit:
        rows += conn.execute(sql["search_index_after_window"], {"q": q, "after": after, "skip": window - 1,
                                                                "limit": limit - len(rows)}).all()
        path += " + trigram index"
    return rows, path


def search_param(dialect: str, fragment: str) -> str:
    """The bound search value exactly as service._enterprise_search builds it."""
    if dialect == "sqlite" and len(fragment) >= 3:
        return '"' + fragment.replace('"', '""') + '"'  # FTS5 phrase (trigram tokenizer: a substring)
    escaped = fragment.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# ============================================================================ load generator

@dataclass
class Recorder:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    max_depth_rows: int = 0
    rows_returned: dict[str, int] = field(default_factory=dict)
    answered_total: int = 0  # warm-up included: what the server's CPU time is divided by
    warmup_failures: int = 0  # failed or timed-out requests sent during the warm-up
    # (seconds into the measurement, endpoint, latency): when the slowest requests were sent,
    # to tell a one-off stall (GC, autovacuum, a busy machine) from a slow endpoint.
    slowest: list[tuple[float, str, float]] = field(default_factory=list)

    def ok(self, endpoint: str, seconds: float, rows: int = 0, at_s: float | None = None) -> None:
        self.latencies.setdefault(endpoint, []).append(seconds)
        if at_s is not None:
            self.slowest.append((round(at_s, 2), endpoint, round(seconds * 1000, 1)))
            if len(self.slowest) > 64:
                self.slowest = sorted(self.slowest, key=lambda x: -x[2])[:8]
        self.rows_returned[endpoint] = self.rows_returned.get(endpoint, 0) + rows

    def fail(self, endpoint: str, what: str) -> None:
        self.errors[endpoint] = self.errors.get(endpoint, 0) + 1
        if len(self.error_samples) < 10:
            self.error_samples.append(f"{endpoint}: {what}")

    def summary(self, duration_s: float, endpoints: list[str] | None = None) -> dict[str, Any]:
        # Every endpoint asked for is listed, even with no answer at all in the window (a
        # stalled server must show as count 0, not vanish from the result).
        names = sorted(set(self.latencies) | set(self.errors) | set(endpoints or []))
        out: dict[str, Any] = {}
        for name in names:
            s = latency_summary(self.latencies.get(name, []), duration_s=duration_s)
            s["errors"] = self.errors.get(name, 0)
            s["rows_per_request"] = round(self.rows_returned.get(name, 0) / s["count"], 1) if s["count"] else 0
            out[name] = s
        return {"endpoints": out, "error_samples": self.error_samples,
                "list_max_depth_rows": self.max_depth_rows, "answered_total": self.answered_total,
                "warmup_failures": self.warmup_failures,
                "slowest": sorted(self.slowest, key=lambda x: -x[2])[:8]}


class _ListWalk:
    """One client paging through the list: starts at a random start point (deep in the list) and
    follows next_cursor; at the end of the list it starts again elsewhere."""

    def __init__(self, starts: list[dict[str, Any]], rng: random.Random) -> None:
        self.starts = starts
        self.rng = rng
        self.restart()

    def restart(self) -> None:
        start = self.rng.choice(self.starts)
        self.cursor: str | None = start["cursor"]
        self.key: int | None = start["id"] if start["cursor"] else None
        self.depth = start["depth"]


async def _http_load(spec: dict[str, Any]) -> dict[str, Any]:
    """Closed loop by default (fixed concurrency: each client sends its next request when its
    last one is answered); with spec["rate"], open loop: requests leave on a fixed schedule
    whatever the server does, and latency counts from the scheduled time, so a stalled server
    cannot hide its queue (no coordinated omission).

    aiohttp rather than httpx: it costs the client several times less CPU per request, which
    matters when client and server share two cores."""
    import aiohttp

    rec = Recorder()
    rng = random.Random(spec.get("seed", 1))
    endpoints: list[str] = spec["endpoints"]
    headers = {"Authorization": f"Bearer {spec['token']}"} if spec.get("token") else {}
    concurrency = int(spec["concurrency"])
    rate = float(spec.get("rate") or 0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    record_from = t0 + float(spec.get("warmup_s", 0))
    stop_at = record_from + float(spec["duration_s"])
    max_in_flight = 256 if rate else concurrency
    connector = aiohttp.TCPConnector(limit=max_in_flight)
    timeout = aiohttp.ClientTimeout(total=30)
    # List walks not in use; a request takes one, pages once, and puts it back.
    walks = [_ListWalk(spec["starts"], random.Random(rng.random()))
             for _ in range(concurrency)] if "list" in endpoints else []
    prng = random.Random(rng.random())

    async with aiohttp.ClientSession(spec["base_url"], headers=headers, connector=connector,
                                     timeout=timeout) as client:

        async def one(ep: str, sent_at: float) -> None:
            """One request; sent_at is when it was due (loop time)."""
            walk = None
            params: dict[str, Any] = {}
            if ep == "list":
                walk = walks.pop() if walks else _ListWalk(spec["starts"], random.Random(prng.random()))
                params = {"limit": PAGE_SIZE}
                if walk.cursor:
                    params["cursor"] = walk.cursor
                path = "/api/enterprises"
            elif ep == "search":
                params = {"q": prng.choice(spec["search_terms"]), "limit": PAGE_SIZE}
                path = "/api/enterprises"
            elif ep == "detail":
                path = f"/api/enterprises/{prng.randint(1, spec['max_id'])}"
            else:
                path = spec["paths"][ep]
            started = time.perf_counter() - (loop.time() - sent_at)
            measured = sent_at >= record_from
            try:
                async with client.get(path, params=params) as r:
                    body = await r.read()
                    status = r.status
                elapsed = time.perf_counter() - started
            except (aiohttp.ClientError, TimeoutError) as e:
                if measured:
                    rec.fail(ep, f"{type(e).__name__}: {e}")
                else:
                    rec.warmup_failures += 1
                if walk is not None:
                    walks.append(walk)
                return
            rec.answered_total += 1
            if status != 200:
                if measured:
                    rec.fail(ep, f"HTTP {status} {path} {params}: {body[:200]!r}")
                else:
                    rec.warmup_failures += 1
                if walk is not None:
                    walk.restart()
                    walks.append(walk)
                return
            rows = 1
            if ep in ("list", "search"):
                page = orjson.loads(body)
                rows = len(page["items"])
                if walk is not None:
                    walk.depth += rows
                    rec.max_depth_rows = max(rec.max_depth_rows, walk.depth)
                    walk.cursor = page.get("next_cursor")
                    if not walk.cursor:
                        walk.restart()
                    walks.append(walk)
            if measured:
                rec.ok(ep, elapsed, rows, at_s=sent_at - record_from)

        async def closed_loop_client(idx: int) -> None:
            i = idx
            while (now := loop.time()) < stop_at:
                await one(endpoints[i % len(endpoints)], now)
                i += 1

        async def open_loop() -> None:
            gate = asyncio.Semaphore(max_in_flight)
            tasks: set[asyncio.Task[None]] = set()
            k = 0

            async def gated(ep: str, due: float) -> None:
                async with gate:
                    await one(ep, due)

            while True:
                due = t0 + k / rate
                if due >= stop_at:
                    break
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(gated(endpoints[k % len(endpoints)], due))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                k += 1
            if tasks:
                await asyncio.gather(*tasks)

        if rate:
            await open_loop()
        else:
            await asyncio.gather(*(closed_loop_client(k) for k in range(concurrency)))
    return rec.summary(float(spec["duration_s"]), spec["endpoints"])


def _db_worker(spec: dict[str, Any], idx: int, seed: float) -> dict[str, Any]:
    """One baseline client: its own process and connection, so the baseline is not slowed by
    the GIL the way threads in one process would be (the server's threads are, but that is part
    of what the API costs)."""
    from sqlalchemy import text

    from ecoplat.db import make_engine

    rec = Recorder()
    engine = make_engine(spec["db_url"], pool_size=1) if not spec["db_url"].startswith("sqlite") \
        else make_engine(spec["db_url"])
    dialect = engine.dialect.name
    sql = {k: text(v) for k, v in baseline_sql(dialect).items()}
    endpoints: list[str] = spec["endpoints"]
    wrng = random.Random(seed)
    walk = _ListWalk(spec["starts"], random.Random(wrng.random()))
    i = idx
    with engine.connect() as conn:
        # Each client's clock starts once it is connected, so process start-up is never measured.
        record_from = time.monotonic() + float(spec.get("warmup_s", 0))
        stop_at = record_from + float(spec["duration_s"])
        while True:
            now = time.monotonic()
            if now >= stop_at:
                break
            ep = endpoints[i % len(endpoints)]
            i += 1
            started = time.perf_counter()
            try:
                if ep == "list":
                    if walk.key is None:
                        rows = conn.execute(sql["list_first"], {"limit": PAGE_SIZE + 1}).all()
                    else:
                        rows = conn.execute(sql["list_after"], {"id": walk.key, "limit": PAGE_SIZE + 1}).all()
                elif ep == "search":
                    q = search_param(dialect, wrng.choice(spec["search_terms"]))
                    rows, _path = search_rows(conn, sql, dialect, q, PAGE_SIZE + 1)
                else:
                    rows = conn.execute(sql["detail"], {"id": wrng.randint(1, spec["max_id"])}).all()
                if rows:
                    ids = ", ".join(str(int(r[0])) for r in rows[:PAGE_SIZE])
                    conn.execute(text(MEMBERSHIP_SQL.format(ids=ids))).all()
                conn.commit()
                elapsed = time.perf_counter() - started
            except Exception as e:  # noqa: BLE001 - a failed query is counted, not fatal
                conn.rollback()
                if now >= record_from:
                    rec.fail(ep, f"{type(e).__name__}: {e}")
                continue
            if ep == "list":
                page = rows[:PAGE_SIZE]
                walk.depth += len(page)
                rec.max_depth_rows = max(rec.max_depth_rows, walk.depth)
                if len(rows) > PAGE_SIZE:
                    walk.key = int(page[-1][0])
                else:
                    walk.restart()
            if now >= record_from:
                rec.ok(ep, elapsed, min(len(rows), PAGE_SIZE))
    engine.dispose()
    return {"latencies": rec.latencies, "errors": rec.errors, "error_samples": rec.error_samples,
            "rows": rec.rows_returned, "max_depth_rows": rec.max_depth_rows}


def _db_load(spec: dict[str, Any]) -> dict[str, Any]:
    """The baseline: the service's queries straight on the database, as many clients as the HTTP
    load has, each in its own process with its own connection."""
    from concurrent.futures import ProcessPoolExecutor

    # Imported before the pool forks, so the clients do not each spend seconds importing.
    import sqlalchemy  # noqa: F401

    import ecoplat.db  # noqa: F401

    concurrency = int(spec["concurrency"])
    rng = random.Random(spec.get("seed", 1))
    with ProcessPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(_db_worker, spec, k, rng.random()) for k in range(concurrency)]
        parts = [f.result() for f in futures]
    rec = Recorder()
    for part in parts:
        for ep, values in part["latencies"].items():
            rec.latencies.setdefault(ep, []).extend(values)
        for ep, n in part["errors"].items():
            rec.errors[ep] = rec.errors.get(ep, 0) + n
        for ep, n in part["rows"].items():
            rec.rows_returned[ep] = rec.rows_returned.get(ep, 0) + n
        rec.error_samples.extend(part["error_samples"][: 10 - len(rec.error_samples)])
        rec.max_depth_rows = max(rec.max_depth_rows, part["max_depth_rows"])
    return rec.summary(float(spec["duration_s"]), spec["endpoints"])


def loadgen_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    result = asyncio.run(_http_load(spec)) if spec["mode"] == "http" else _db_load(spec)
    print_final_json(result)


def run_loadgen(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Runs the load generator as a separate process and returns its summary."""
    path = workdir / f"loadgen-{spec['mode']}-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(spec))
    budget = float(spec.get("warmup_s", 0)) + float(spec["duration_s"]) + 120
    proc = subprocess.run([sys.executable, "-m", "bench.tenancy", "_loadgen", str(path)], cwd=ROOT,
                          env=_child_env(), capture_output=True, text=True, timeout=budget)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ============================================================================ servers

def trivial_app() -> Any:
    """The HTTP floor: a bare Starlette route answering a small JSON, no database, no auth."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def ping(_request: Any) -> JSONResponse:
        return JSONResponse({"id": 1, "name": "ping"})

    return Starlette(routes=[Route("/ping", ping)])


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds a process has used so far (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_ms_per_request(pid: int, before: float | None, answered: int) -> float | None:
    after = process_cpu_s(pid)
    if before is None or after is None or not answered:
        return None
    return round((after - before) * 1000 / answered, 3)


def _child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


@contextlib.contextmanager
def running(cmd: list[str], *, env: dict[str, str], health_url: str, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = log_path.open("wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_for_http(health_url, timeout_s=90, proc=proc)
        except Exception as e:
            log.flush()
            raise RuntimeError(f"{e}\n--- server log ---\n{log_path.read_text(errors='replace')[-3000:]}") from e
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def platform_server(db_url: str, port: int, data_dir: Path) -> contextlib.AbstractContextManager[Any]:
    """`ecoplat serve` in a subprocess: the real app factory, runtimes and middleware."""
    env = _child_env(
        ECOPLAT_DATABASE_URL=db_url,
        ECOPLAT_MQTT_ENABLED="false",
        ECOPLAT_SECRET_KEY="bench-secret-" + "x" * 40,
        ECOPLAT_ACCESS_TOKEN_MINUTES="240",
        ECOPLAT_LOG_LEVEL="WARNING",
        ECOPLAT_LOG_JSON="true",
        ECOPLAT_DEMO_SIMULATE_DEVICES="0",
    )
    cmd = [sys.executable, "-m", "ecoplat.cli", "serve", "--data-dir", str(data_dir), "--port", str(port)]
    return running(cmd, env=env, health_url=f"http://127.0.0.1:{port}/openapi.json",
                   log_path=data_dir / "server.log")


def trivial_server(port: int, workdir: Path) -> contextlib.AbstractContextManager[Any]:
    cmd = [sys.executable, "-m", "uvicorn", "bench.tenancy:trivial_app", "--factory", "--host", "127.0.0.1",
           "--port", str(port), "--no-access-log", "--log-level", "warning"]
    return running(cmd, env=_child_env(), health_url=f"http://127.0.0.1:{port}/ping",
                   log_path=workdir / "trivial.log")


# ============================================================================ one backend

def sign_in(base_url: str, email: str, password: str) -> str:
    r = httpx.post(f"{base_url}/api/auth/token", data={"username": email, "password": password}, timeout=30)
    if r.status_code != 200:
        raise RuntimeError(f"sign-in as {email} failed: HTTP {r.status_code} {r.text[:300]}")
    return str(r.json()["access_token"])


def collect_start_points(base_url: str, token: str, *, max_points: int = 400) -> list[dict[str, Any]]:
    """Walks the whole list once with the largest page the server allows and keeps the cursor
    (and the last row's sort key, for the database baseline) of every page: starting list walks
    from these puts the load deep into the 100k, not just on the first pages."""
    headers = {"Authorization": f"Bearer {token}"}
    starts: list[dict[str, Any]] = [{"cursor": None, "id": None, "depth": 0}]
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
        limit = 500
        r = client.get("/api/enterprises", params={"limit": limit})
        if r.status_code == 422:
            limit = 100
            r = client.get("/api/enterprises", params={"limit": limit})
        depth = 0
        while True:
            if r.status_code != 200:
                raise RuntimeError(f"walking the enterprise list failed: HTTP {r.status_code} {r.text[:300]}")
            body = r.json()
            items = body["items"]
            depth += len(items)
            cursor = body.get("next_cursor")
            if not cursor or not items:
                break
            starts.append({"cursor": cursor, "id": items[-1]["id"], "depth": depth})
            r = client.get("/api/enterprises", params={"limit": limit, "cursor": cursor})
    if len(starts) > max_points:
        step = len(starts) / max_points
        starts = [starts[int(k * step)] for k in range(max_points)]
    return starts


def explain(db_url: str, terms: list[str], starts: list[dict[str, Any]]) -> dict[str, str]:
    """The plan of each baseline query, to show whether it is index-backed."""
    from sqlalchemy import text

    from ecoplat.db import make_engine
    from ecoplat.tenancy.search import FIRST_WINDOW_ROWS_PER_ROW

    engine = make_engine(db_url)
    dialect = engine.dialect.name
    deep = starts[len(starts) // 2]
    q = search_param(dialect, terms[0])
    params = {
        "list_first": {"limit": PAGE_SIZE + 1},
        "list_after": {"id": deep["id"] or 0, "limit": PAGE_SIZE + 1},
        "search": {"q": q, "limit": PAGE_SIZE + 1},
        "search_window": {"q": q, "after": 0, "window": (PAGE_SIZE + 1) * FIRST_WINDOW_ROWS_PER_ROW,
                          "limit": PAGE_SIZE + 1},
        "search_window_end": {"after": 0, "skip": (PAGE_SIZE + 1) * FIRST_WINDOW_ROWS_PER_ROW - 1},
        "search_index": {"q": q, "after": 0, "limit": PAGE_SIZE + 1},
        "search_index_after_window": {"q": q, "after": 0, "skip": (PAGE_SIZE + 1) * FIRST_WINDOW_ROWS_PER_ROW - 1,
                                      "limit": PAGE_SIZE + 1},
        "detail": {"id": 1},
    }
    prefix = "EXPLAIN QUERY PLAN " if dialect == "sqlite" else "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) "
    plans: dict[str, str] = {}
    with engine.connect() as conn:
        for name, sql in baseline_sql(dialect).items():
            try:
                rows = conn.execute(text(prefix + sql), params[name]).all()
                plans[name] = " | ".join(str(r[-1]) for r in rows)
            except Exception as e:  # noqa: BLE001 - a plan that cannot be made is reported, not fatal
                conn.rollback()
                plans[name] = f"error: {type(e).__name__}: {e}"
        if dialect == "postgresql":
            plans["search_all_terms"] = _search_plans_by_term(conn, terms)
    engine.dispose()
    return plans


def _search_plans_by_term(conn: Any, terms: list[str]) -> str:
    """How tenancy.search read each search term (first window, second window, trigram index after
    them), with the slowest term per path; the trigram index step must use the trigram index."""
    from sqlalchemy import text

    sql = {k: text(v) for k, v in baseline_sql("postgresql").items()}
    by_path: dict[str, list[tuple[float, str]]] = {}
    for term in terms:
        started = time.perf_counter()
        _rows, path = search_rows(conn, sql, "postgresql", search_param("postgresql", term), PAGE_SIZE + 1)
        by_path.setdefault(path, []).append(((time.perf_counter() - started) * 1000, term))
    parts = []
    for path, hits in sorted(by_path.items()):
        worst = max(hits)
        parts.append(f"{path}: {len(hits)} of {len(terms)} terms, slowest {worst[0]:.1f} ms ('{worst[1]}')")
    from ecoplat.tenancy.search import FIRST_WINDOW_ROWS_PER_ROW

    slowest_rare = max(by_path.get("first window + trigram index", [(0.0, terms[0])]))[1]
    plan = conn.execute(text("EXPLAIN " + baseline_sql("postgresql")["search_index_after_window"]),
                        {"q": search_param("postgresql", slowest_rare), "after": 0,
                         "skip": (PAGE_SIZE + 1) * FIRST_WINDOW_ROWS_PER_ROW - 1, "limit": PAGE_SIZE + 1}).all()
    index = "uses" if any("trgm" in str(r[0]) for r in plan) else "does NOT use"
    return "; ".join(parts) + f"; the trigram index step {index} ix_enterprises_name_trgm"


def bench_backend(backend: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from bench import _seed

    console.rule(f"[bold]{backend}[/bold]: {args.enterprises:,} enterprises × {args.users_per_enterprise} users")
    load_before = os.getloadavg()[0]
    if backend == "sqlite":
        db_url = f"sqlite:///{workdir / 'bench-tenancy.db'}"
    else:
        db_url = _seed.create_postgres_database(args.postgres_admin_url)
    try:
        with make_progress() as progress:
            tasks: dict[str, Any] = {}

            def on_progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = progress.add_task(f"seed {stage}", total=total)
                progress.update(tasks[stage], completed=done, total=total)

            seeded = _seed.seed_tenancy(db_url, enterprises=args.enterprises,
                                        users_per_enterprise=args.users_per_enterprise,
                                        on_progress=on_progress)
        console.print(f"seeded {seeded.enterprises:,} enterprises and {seeded.users:,} users in "
                      f"{seeded.seconds} s ({seeded.rows_per_s:,.0f} rows/s); search index: {seeded.search_index}")
        terms = seeded.brands[:100] or ["Co"]
        port = free_port()
        data_dir = workdir / f"var-{backend}"
        data_dir.mkdir(exist_ok=True)
        base_url = f"http://127.0.0.1:{port}"
        common = {"concurrency": args.concurrency, "rate": args.rate, "seed": 7, "search_terms": terms,
                  "max_id": args.enterprises}
        with platform_server(db_url, port, data_dir) as server:
            token = sign_in(base_url, seeded.admin_email, seeded.admin_password)
            console.print("walking the list once to spread start points over every depth …")
            starts = collect_start_points(base_url, token)
            shape = (f"{args.rate:g} requests/s on a fixed schedule" if args.rate
                     else f"{args.concurrency} concurrent clients")
            console.print(f"load: {shape}, {args.duration} s (+{args.warmup} s warm-up), "
                          "list/search/detail in equal shares")
            cpu_before = process_cpu_s(server.pid)
            api = run_loadgen({**common, "mode": "http", "base_url": base_url, "token": token,
                               "endpoints": list(ENDPOINTS), "starts": starts,
                               "duration_s": args.duration, "warmup_s": args.warmup}, workdir)
            # CPU per request hardly depends on how busy the machine is, unlike latency.
            api["server_cpu_ms_per_request"] = cpu_ms_per_request(server.pid, cpu_before, api["answered_total"])
            if api.get("warmup_failures") or any(not v.get("count") or v.get("errors")
                                                 for v in api["endpoints"].values()):
                # The temporary directory goes away: keep what the server said about it.
                log_text = (data_dir / "server.log").read_text(errors="replace")
                api["server_log_tail"] = log_text[-2000:]
        console.print("baseline: the same queries straight on the database …")
        db = run_loadgen({**common, "mode": "db", "db_url": db_url, "endpoints": list(ENDPOINTS),
                          "starts": starts, "duration_s": args.baseline_duration,
                          "warmup_s": min(args.warmup, 1.0)}, workdir)
        plans = explain(db_url, terms, starts)
        console.print("baseline: a bare Starlette route under the same uvicorn (HTTP floor) …")
        tport = free_port()
        with trivial_server(tport, workdir) as trivial:
            cpu_before = process_cpu_s(trivial.pid)
            floor = run_loadgen({**common, "mode": "http", "base_url": f"http://127.0.0.1:{tport}",
                                 "endpoints": ["http_floor"], "paths": {"http_floor": "/ping"}, "starts": [],
                                 "duration_s": args.baseline_duration, "warmup_s": min(args.warmup, 1.0)},
                                workdir)
            floor["server_cpu_ms_per_request"] = cpu_ms_per_request(trivial.pid, cpu_before,
                                                                     floor["answered_total"])
    finally:
        if backend == "postgres":
            _seed.drop_postgres_database(db_url, args.postgres_admin_url)
    result = summarize(backend, seeded, api, db, floor, plans, len(starts))
    # Figures from a shared machine mean little without knowing how busy it was.
    result["loadavg_1m"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2),
                            "cpus": os.cpu_count()}
    return result


def summarize(backend: str, seeded: Any, api: dict[str, Any], db: dict[str, Any], floor: dict[str, Any],
              plans: dict[str, str], start_points: int) -> dict[str, Any]:
    floor_ep = floor["endpoints"].get("http_floor", {})
    floor_p95 = floor_ep.get("p95_ms") or 0.0
    ratios: dict[str, float | None] = {}
    for ep in ENDPOINTS:
        a = api["endpoints"].get(ep, {}).get("p95_ms")
        b = db["endpoints"].get(ep, {}).get("p95_ms")
        ratios[ep] = round(a / (b + floor_p95), 2) if a is not None and b is not None and (b + floor_p95) > 0 else None
    p95s = [api["endpoints"].get(ep, {}).get("p95_ms") for ep in ENDPOINTS]
    errors = sum(api["endpoints"].get(ep, {}).get("errors", 0) for ep in ENDPOINTS) + api.get("warmup_failures", 0)
    meets = all(p is not None and p < TARGET_P95_MS for p in p95s) and errors == 0
    return {
        "seed": {"enterprises": seeded.enterprises, "users": seeded.users, "seconds": seeded.seconds,
                 "rows_per_s": seeded.rows_per_s, "search_index": seeded.search_index},
        "endpoints": {ep: api["endpoints"].get(ep, {}) for ep in ENDPOINTS},
        "server_cpu_ms_per_request": {"api_mixed": api.get("server_cpu_ms_per_request"),
                                      "http_floor": floor.get("server_cpu_ms_per_request")},
        "list_start_points": start_points,
        "list_max_depth_rows": api["list_max_depth_rows"],
        "slowest_requests": [{"at_s": a, "endpoint": e, "ms": m} for a, e, m in api["slowest"]],
        "error_samples": api["error_samples"],
        "warmup_failures": api.get("warmup_failures", 0),
        "server_log_tail": api.get("server_log_tail"),
        "baseline": {"db": {ep: db["endpoints"].get(ep, {}) for ep in ENDPOINTS},
                     "db_error_samples": db["error_samples"],
                     "http_floor": floor_ep},
        "ratio_p95": ratios,
        "plans": plans,
        "target_p95_ms": TARGET_P95_MS,
        "meets_target": meets,
    }


def print_table(backend: str, result: dict[str, Any]) -> None:
    table = Table(title=f"{backend}: latency under load (ms)")
    for col in ("endpoint", "requests", "errors", "p50", "p95", "p99", "req/s", "db p95", "floor p95", "ratio p95"):
        table.add_column(col, justify="right" if col != "endpoint" else "left")
    floor = result["baseline"]["http_floor"]
    for ep in ENDPOINTS:
        e = result["endpoints"][ep]
        b = result["baseline"]["db"].get(ep, {})
        p95 = e.get("p95_ms")
        colour = "green" if p95 is not None and p95 < TARGET_P95_MS else "red"
        table.add_row(ep, str(e.get("count", 0)), str(e.get("errors", 0)), f"{e.get('p50_ms')}",
                      f"[{colour}]{p95}[/{colour}]", f"{e.get('p99_ms')}", f"{e.get('throughput_rps')}",
                      f"{b.get('p95_ms')}", f"{floor.get('p95_ms')}", f"{result['ratio_p95'][ep]}")
    console.print(table)
    cpu = result["server_cpu_ms_per_request"]
    console.print(f"server CPU per request: platform (mixed) {cpu['api_mixed']} ms, "
                  f"bare Starlette {cpu['http_floor']} ms")
    console.print(f"list walks reached row {result['list_max_depth_rows']:,} "
                  f"(from {result['list_start_points']} start points)")
    for name, plan in result["plans"].items():
        console.print(f"[dim]plan {name}: {plan}[/dim]")
    if result["error_samples"]:
        console.print(f"[red]errors:[/red] {result['error_samples']}")
    stalled = [ep for ep in ENDPOINTS if not result["endpoints"][ep].get("count")]
    if stalled:
        console.print(f"[red]no answer at all in the measured window for {', '.join(stalled)}[/red] "
                      "(a stalled server: see its log)")


# ============================================================================ command line

def parse_args(argv: list[str]) -> argparse.Namespace:
    from bench._seed import DEFAULT_POSTGRES_ADMIN_URL

    p = argparse.ArgumentParser(prog="ecoplat bench tenancy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=["sqlite", "postgres", "both"], default=None,
                   help="default: both when PostgreSQL is reachable, else sqlite")
    p.add_argument("--enterprises", type=int, default=100_000)
    p.add_argument("--users-per-enterprise", type=int, default=10)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of measured API load per backend")
    p.add_argument("--baseline-duration", type=float, default=None,
                   help="seconds for each baseline (default: half of --duration, at least 2)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load first")
    p.add_argument("--concurrency", type=int, default=4,
                   help="concurrent clients of the load generator (closed loop), and of the DB baseline")
    p.add_argument("--rate", type=float, default=None,
                   help="open loop instead: this many requests per second in total on a fixed schedule "
                        "(latency counted from the scheduled time)")
    p.add_argument("--postgres-admin-url",
                   default=os.environ.get("ECOPLAT_TEST_POSTGRES_URL", DEFAULT_POSTGRES_ADMIN_URL),
                   help="a PostgreSQL database to create and drop the benchmark database from")
    p.add_argument("--workdir", type=Path, default=None, help="where temporary files go (default: a temp dir)")
    args = p.parse_args(argv)
    if args.baseline_duration is None:
        args.baseline_duration = max(2.0, args.duration / 2)
    if args.rate is not None and args.rate <= 0:
        p.error("--rate must be positive")
    if args.enterprises < 1 or args.users_per_enterprise < 1 or args.concurrency < 1 or args.duration <= 0:
        p.error("--enterprises, --users-per-enterprise and --concurrency must be at least 1, --duration positive")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_loadgen"]:
        loadgen_main(argv[1])
        return 0
    args = parse_args(argv)
    from bench._seed import postgres_reachable

    if args.backend is None:
        args.backend = "both" if postgres_reachable(args.postgres_admin_url) else "sqlite"
        if args.backend == "sqlite":
            console.print(f"[yellow]PostgreSQL at {args.postgres_admin_url} is not reachable: SQLite only.[/yellow]")
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    started = time.perf_counter()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ecoplat-bench-tenancy-", dir=args.workdir) as tmp:
        for backend in backends:
            try:
                results[backend] = bench_backend(backend, args, Path(tmp))
            except Exception as e:  # noqa: BLE001 - one backend failing must not hide the other
                console.print(f"[red]{backend} failed:[/red] {e}")
                results[backend] = {"error": f"{type(e).__name__}: {str(e)[-1500:]}", "meets_target": False}
                continue
            print_table(backend, results[backend])
    final = {
        "benchmark": "tenancy",
        "enterprises": args.enterprises,
        "users_per_enterprise": args.users_per_enterprise,
        "concurrency": args.concurrency,
        "rate_rps": args.rate,
        "load": "open loop, fixed rate" if args.rate else "closed loop, fixed concurrency",
        "duration_s": args.duration,
        "target_p95_ms": TARGET_P95_MS,
        "backends": results,
        "meets_target": all(r["meets_target"] for r in results.values()),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print_final_json(final)
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
