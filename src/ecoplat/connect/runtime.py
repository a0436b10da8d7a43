"""Connect's background work, started by the app lifespan after telemetry: the ingest pipeline
(app.state.ingest) first, then the transports that feed it."""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI

from ecoplat.connect.ingest import IngestPipeline

log = logging.getLogger(__name__)


async def start_ingest(app: FastAPI) -> IngestPipeline:
    """Builds app.state.ingest on the telemetry store the telemetry runtime opened."""
    settings = app.state.settings
    store = getattr(app.state, "telemetry", None)
    if store is None:
        # Telemetry's runtime normally opens the store first; open one here when run alone.
        from ecoplat.telemetry.store import open_platform_store

        store = open_platform_store(settings)
        app.state.telemetry = store
        app.state.connect_opened_store = True
    pipeline = IngestPipeline(database=app.state.db, store=store, events=app.state.events,
                              batch_max_points=settings.ingest_batch_max_points,
                              batch_max_ms=settings.ingest_batch_max_ms,
                              queue_max_points=settings.ingest_queue_max_points)
    pipeline.start()
    app.state.ingest = pipeline
    return pipeline


async def stop_ingest(app: FastAPI) -> None:
    pipeline: IngestPipeline | None = getattr(app.state, "ingest", None)
    if pipeline is not None:
        await asyncio.to_thread(pipeline.stop)
        app.state.ingest = None
    if getattr(app.state, "connect_opened_store", False):
        app.state.telemetry.close()
        app.state.connect_opened_store = False


async def start(app: FastAPI) -> None:
    await start_ingest(app)
    # MQTT transports (engineer "connect-mqtt", connect/mqtt.py): embedded broker or bridge.
    from ecoplat.connect.mqtt import start_mqtt

    await start_mqtt(app)
    # Gateways (engineer "gateways"): OPC UA / Modbus connectors of every tenant, and the demo
    # simulator; both feed app.state.ingest.
    from ecoplat.connect.gateways.runtime import start_connectors, start_demo_simulator

    await start_connectors(app)
    await start_demo_simulator(app)


async def stop(app: FastAPI) -> None:
    # Transports first, so nothing submits into a stopping pipeline.
    from ecoplat.connect.gateways.runtime import stop_connectors, stop_demo_simulator
    from ecoplat.connect.mqtt import stop_mqtt

    await stop_demo_simulator(app)
    await stop_connectors(app)
    await stop_mqtt(app)
    await stop_ingest(app)
