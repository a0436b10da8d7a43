"""Opens the telemetry store for the app (app.state.telemetry) and runs retention in the
background; stop() closes it."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import FastAPI

from ecoplat.telemetry.service import apply_all_retention
from ecoplat.telemetry.store import open_platform_store

log = logging.getLogger(__name__)

RETENTION_EVERY_S = 3600.0
RETENTION_FIRST_AFTER_S = 60.0


async def _retention_loop(app: FastAPI) -> None:
    await asyncio.sleep(RETENTION_FIRST_AFTER_S)
    while True:
        try:
            await asyncio.to_thread(apply_all_retention, app.state.db, app.state.telemetry)
        except Exception:
            # A failed pass (database busy, restarting) is retried at the next period.
            log.exception("telemetry retention pass failed")
        await asyncio.sleep(RETENTION_EVERY_S)


async def start(app: FastAPI) -> None:
    app.state.telemetry = await asyncio.to_thread(open_platform_store, app.state.settings, app.state.db.url)
    app.state.telemetry_retention_task = asyncio.create_task(_retention_loop(app),
                                                             name="telemetry-retention")


async def stop(app: FastAPI) -> None:
    task = getattr(app.state, "telemetry_retention_task", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    store = getattr(app.state, "telemetry", None)
    if store is not None:
        await asyncio.to_thread(store.close)
