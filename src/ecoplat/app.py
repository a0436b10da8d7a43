"""FastAPI app factory: mounts each domain's routers and runtime; no logic of its own."""

from __future__ import annotations

import gc
import importlib
import importlib.util
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ecoplat.config import Settings
from ecoplat.db import Database
from ecoplat.errors import BodySizeLimit, RejectNulText, install_error_handlers
from ecoplat.events import EventBus, make_event_bus
from ecoplat.heap import settle
from ecoplat.tenancy.auth import PrincipalCache

log = logging.getLogger(__name__)

# Domain folders, in start-up order. Each may have api.py (`router`), pages.py (`router`) and
# runtime.py (`async start(app)`, `async stop(app)`) for background work such as ingest.
DOMAINS = ["tenancy", "telemetry", "connect", "alarms", "web"]

HTTP_REQUESTS = Counter("ecoplat_http_requests_total", "HTTP requests", ["method", "route", "status"])
HTTP_LATENCY = Histogram("ecoplat_http_request_seconds", "HTTP request latency", ["method", "route"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
# Garbage-collector pauses stop every thread that needs the GIL (ingest, the rule engine, HTTP):
# their length per generation is what explains a latency tail no profile of our code shows.
GC_PAUSE = Histogram("ecoplat_gc_pause_seconds", "Python garbage collection pauses", ["generation"],
                     buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))
_gc_started = [0.0]


def _time_gc(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    else:
        GC_PAUSE.labels(str(info["generation"])).observe(time.perf_counter() - _gc_started[0])


def watch_gc() -> None:
    """Records every collection's pause in ecoplat_gc_pause_seconds (once per process)."""
    if _time_gc not in gc.callbacks:
        gc.callbacks.append(_time_gc)


class HttpMetrics:
    """Counts each HTTP request and times it until its response starts, per route template.

    A plain ASGI middleware: Starlette's BaseHTTPMiddleware (`@app.middleware("http")`) runs
    every request through a task group and memory streams, which cost more CPU per request
    than the route's own database work on a small page."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                path = getattr(scope.get("route"), "path", "unmatched")
                method = scope["method"]
                HTTP_LATENCY.labels(method, path).observe(time.perf_counter() - start)
                HTTP_REQUESTS.labels(method, path, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, timed_send)


def _domain_module(domain: str, name: str) -> Any | None:
    mod = f"ecoplat.{domain}.{name}"
    if importlib.util.find_spec(mod) is None:
        return None
    return importlib.import_module(mod)


def create_app(settings: Settings | None = None, *, database: Database | None = None,
               events: EventBus | None = None, start_runtime: bool = True) -> FastAPI:
    settings = settings or Settings()
    database = database or Database(settings.resolved_database_url)
    events = events or make_event_bus(settings.events_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await events.start()
        started: list[Any] = []
        try:
            if start_runtime:
                for domain in DOMAINS:
                    runtime = _domain_module(domain, "runtime")
                    if runtime is not None:
                        await runtime.start(app)
                        started.append(runtime)
            # Start-up objects live as long as the process: out of every later collection's walk
            # (measured: list p95 11 → 7 ms, and multi-second collection stalls gone; heap.py).
            settle("platform")
            watch_gc()
            yield
        finally:
            for runtime in reversed(started):
                try:
                    await runtime.stop(app)
                except Exception:
                    log.exception("stopping %s failed", runtime.__name__)
            await events.stop()

    app = FastAPI(
        title="Ecoplat",
        version="0.1.0",
        summary="An open industrial-internet platform for industry ecosystems.",
        lifespan=lifespan,
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    app.state.db = database
    app.state.events = events
    app.state.principals = PrincipalCache(database.sessionmaker, ttl_s=settings.auth_cache_seconds)

    install_error_handlers(app)
    app.add_middleware(RejectNulText)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    app.add_middleware(HttpMetrics)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    for domain in DOMAINS:
        for name in ("api", "pages"):
            module = _domain_module(domain, name)
            if module is not None and hasattr(module, "router"):
                app.include_router(module.router)
    return app
