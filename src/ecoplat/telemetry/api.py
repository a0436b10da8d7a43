"""Thin routes over telemetry.service: latest values, raw or aggregated ranges, CSV export, keys,
a Server-Sent Events live feed per device, and retention per enterprise."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import time
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ecoplat.api_common import ObjectId, client_ip
from ecoplat.db import DbSession
from ecoplat.errors import Unprocessable
from ecoplat.events import Event
from ecoplat.telemetry import service
from ecoplat.telemetry.base import SqlTelemetryStore
from ecoplat.telemetry.points import Sample
from ecoplat.telemetry.query import AGGS, DAY_MS, bucket_value, parse_interval, parse_time
from ecoplat.telemetry.schemas import RetentionIn, RetentionOut, SampleOut
from ecoplat.telemetry.store import store_for
from ecoplat.tenancy.auth import CurrentPrincipal

router = APIRouter(tags=["telemetry"])

MAX_LIMIT = 100_000
MAX_BUCKETS = 100_000
MIN_INTERVAL_MS = 1_000
MAX_INTERVAL_MS = 366 * DAY_MS
# 9999-12-31T23:59:59.999Z, the last instant ISO 8601 can name: larger numbers would overflow
# the databases' 64-bit integers instead of answering a clear 422.
MAX_TS_MS = 253_402_300_799_999


def _store(request: Request) -> SqlTelemetryStore:
    return store_for(request.app)


def _keys(keys: str | None) -> list[str] | None:
    if keys is None:
        return None
    out = [k.strip() for k in keys.split(",") if k.strip()]
    return out or None


def _bad(field: str, message: str) -> Unprocessable:
    return Unprocessable(f"{field}: {message}", errors=[{"field": field, "message": message}])


def _window(start: str | None, end: str | None) -> tuple[int, int]:
    try:
        end_ms = parse_time(end) if end else int(time.time() * 1000) + 1
    except ValueError as e:
        raise _bad("end", str(e)) from None
    try:
        start_ms = parse_time(start) if start else end_ms - DAY_MS
    except ValueError as e:
        raise _bad("start", str(e)) from None
    if start_ms < 0:
        raise _bad("start", "must not be before 1970-01-01")
    if end_ms > MAX_TS_MS + 1:
        raise _bad("end", "must not be after 9999-12-31")
    if end_ms <= start_ms:
        raise _bad("end", f"must be after start (start={start_ms}, end={end_ms})")
    return start_ms, end_ms


def _interval(interval: str | None, agg: str | None, start_ms: int, end_ms: int) -> int | None:
    if interval is None:
        if agg is not None:
            raise _bad("interval", "an aggregate (agg) needs an interval, e.g. interval=1h")
        return None
    try:
        ms = parse_interval(interval)
    except ValueError as e:
        raise _bad("interval", str(e)) from None
    if not MIN_INTERVAL_MS <= ms <= MAX_INTERVAL_MS:
        raise _bad("interval", f"must be between {MIN_INTERVAL_MS} ms and 366 days")
    if (end_ms - start_ms) // ms > MAX_BUCKETS:
        raise _bad("interval", f"the range holds more than {MAX_BUCKETS} intervals; choose a longer "
                               f"interval or a shorter range")
    return ms


def _agg(agg: str | None) -> str:
    agg = (agg or "avg").lower()
    if agg not in AGGS:
        raise _bad("agg", f"must be one of {', '.join(AGGS)}")
    return agg


Keys = Annotated[str | None, Query(description="Comma-separated keys; all keys when absent.")]
Start = Annotated[str | None, Query(description="Start (inclusive), ms since the epoch or ISO 8601; default end - 1 day.")]
End = Annotated[str | None, Query(description="End (exclusive), ms since the epoch or ISO 8601; default now.")]
Interval = Annotated[str | None, Query(description="Aggregate per interval: 30s, 1m, 15m, 1h, 1d or ms.")]
Agg = Annotated[str | None, Query(description="avg, min, max, count or sum (with interval; default avg).")]


@router.get("/api/devices/{device_id}/telemetry/latest", response_model=dict[str, SampleOut])
def latest(request: Request, db: DbSession, actor: CurrentPrincipal, device_id: ObjectId,
           keys: Keys = None) -> dict[str, SampleOut]:
    found = service.latest(db, actor=actor, store=_store(request), device_id=device_id, keys=_keys(keys))
    return {k: SampleOut(ts=s.ts, value=s.value) for k, s in sorted(found.items())}


@router.get("/api/devices/{device_id}/telemetry/keys", response_model=list[str])
def telemetry_keys(request: Request, db: DbSession, actor: CurrentPrincipal, device_id: ObjectId) -> list[str]:
    return service.keys(db, actor=actor, store=_store(request), device_id=device_id)


@router.get("/api/devices/{device_id}/telemetry", response_model=dict[str, list[SampleOut]])
def telemetry(request: Request, db: DbSession, actor: CurrentPrincipal, device_id: ObjectId,
              keys: Keys = None, start: Start = None, end: End = None, interval: Interval = None,
              agg: Agg = None,
              limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Raw points per key.")] = 1_000,
              order: Annotated[Literal["asc", "desc"], Query(
                  description="Raw points oldest first (asc), or the most recent `limit` newest first (desc).")] = "asc",
              ) -> dict[str, list[SampleOut]]:
    """Raw points of each key in [start, end), or one value per interval with `interval`+`agg`."""
    start_ms, end_ms = _window(start, end)
    interval_ms = _interval(interval, agg, start_ms, end_ms)
    store = _store(request)
    if interval_ms is None:
        raw = service.raw_range(db, actor=actor, store=store, device_id=device_id, keys=_keys(keys),
                                start_ms=start_ms, end_ms=end_ms, limit=limit, newest_first=order == "desc")
        return {k: [SampleOut(ts=s.ts, value=s.value) for s in v] for k, v in raw.items()}
    how = _agg(agg)
    buckets = service.aggregated(db, actor=actor, store=store, device_id=device_id, keys=_keys(keys),
                                 start_ms=start_ms, end_ms=end_ms, interval_ms=interval_ms)
    return {k: [SampleOut(ts=b.ts, value=bucket_value(b, how)) for b in v] for k, v in buckets.items()}


def csv_value(value: Any) -> str:
    """The CSV cell for a value, read back by the importer as the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


@router.get("/api/devices/{device_id}/telemetry.csv", response_class=StreamingResponse,
            responses={200: {"content": {"text/csv": {}}}})
def telemetry_csv(request: Request, db: DbSession, actor: CurrentPrincipal, device_id: ObjectId,
                  keys: Keys = None, start: Start = None, end: End = None, interval: Interval = None,
                  agg: Agg = None) -> StreamingResponse:
    """CSV (device,ts,key,value) streamed page by page: raw points, or aggregates per interval.
    `ecoplat import telemetry` reads the same columns back."""
    start_ms, end_ms = _window(start, end)
    interval_ms = _interval(interval, agg, start_ms, end_ms)
    how = _agg(agg)
    store = _store(request)
    service.readable_device(db, actor=actor, device_id=device_id)
    wanted = _keys(keys) or store.keys(device_id)

    def rows() -> Iterator[str]:
        buf = io.StringIO()
        out = csv.writer(buf, lineterminator="\n")
        out.writerow(["device", "ts", "key", "value"])
        for key in wanted:
            if interval_ms is None:
                samples: Iterator[Sample] = store.iter_range(device_id, key, start_ms, end_ms)
            else:
                buckets = store.aggregate(device_id, [key], start_ms, end_ms, interval_ms)[key]
                samples = iter([Sample(b.ts, bucket_value(b, how)) for b in buckets])  # type: ignore[arg-type]
            for s in samples:
                out.writerow([device_id, s.ts, key, csv_value(s.value)])
                if buf.tell() > 64_000:
                    yield buf.getvalue()
                    buf.seek(0)
                    buf.truncate()
        yield buf.getvalue()

    return StreamingResponse(rows(), media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="device-{device_id}-telemetry.csv"'})


def _sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


@router.get("/api/devices/{device_id}/live", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def live(request: Request, db: DbSession, actor: CurrentPrincipal, device_id: ObjectId,
               heartbeat: Annotated[float, Query(ge=1, le=60, description="Seconds between heartbeat comments.")] = 15,
               ) -> StreamingResponse:
    """Server-Sent Events: first a `snapshot` of the latest values, then a `telemetry` event per
    stored batch of this device ({"device_id", "ts", "values"}), and `: heartbeat` comments."""
    device = await run_in_threadpool(service.readable_device, db, actor=actor, device_id=device_id)
    # The stream may stay open for hours: end the request's unit of work now so it holds no
    # database connection meanwhile.
    await run_in_threadpool(db.commit)
    store = _store(request)
    topic = f"telemetry.{device.enterprise_id}.{device_id}"
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=1000)

    def put(event: Event) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # a slow page drops, never blocks ingest
            queue.put_nowait(event)

    def on_event(event: Event) -> None:  # runs in the publisher's thread
        if event.topic == topic:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(put, event)

    # Listen before reading the snapshot, so no point falls between the two.
    remove = request.app.state.events.add_listener(topic, on_event)
    try:
        snapshot = await run_in_threadpool(store.latest, device_id)
    except BaseException:
        remove()
        raise

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield _sse("snapshot", {k: {"ts": s.ts, "value": s.value} for k, s in sorted(snapshot.items())})
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=heartbeat)
                except TimeoutError:
                    yield b": heartbeat\n\n"
                    continue
                yield _sse("telemetry", event.data)
        finally:
            remove()

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/api/enterprises/{enterprise_id}/telemetry-retention", response_model=RetentionOut)
def get_retention(db: DbSession, actor: CurrentPrincipal, enterprise_id: ObjectId) -> RetentionOut:
    return service.get_retention(db, actor=actor, enterprise_id=enterprise_id)


@router.put("/api/enterprises/{enterprise_id}/telemetry-retention", response_model=RetentionOut)
def put_retention(request: Request, db: DbSession, actor: CurrentPrincipal, enterprise_id: ObjectId,
                  data: RetentionIn) -> RetentionOut:
    """Days of raw telemetry the enterprise keeps (enterprise admin); null keeps it forever."""
    return service.set_retention(db, actor=actor, enterprise_id=enterprise_id, data=data,
                                 ip=client_ip(request))
