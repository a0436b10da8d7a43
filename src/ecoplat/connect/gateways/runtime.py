"""The connector manager on `app.state.connectors`: runs every enabled connector of every tenant
as an asyncio task (one coordinator per connection), restarts one when its configuration
changes, and persists each connector's state so pages and other processes see it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from fastapi import FastAPI

from ecoplat.connect.gateways.base import (
    ConnectorState,
    ConnectorStatus,
    Coordinator,
    connector_types,
)
from ecoplat.connect.gateways.service import ConnectorSpec, enabled_specs, save_status
from ecoplat.db import Database
from ecoplat.telemetry.points import Point

log = logging.getLogger(__name__)


class ConnectorManager:
    """Owns the live coordinators of this process. Each coordinator gets its own connector
    instance built from its own row; nothing tenant-specific is shared."""

    def __init__(self, *, database: Database, ingest: Any, status_flush_s: float = 1.0,
                 success_flush_s: float = 10.0) -> None:
        self.database = database
        self.ingest = ingest
        self.status_flush_s = status_flush_s
        self.success_flush_s = success_flush_s
        self._coordinators: dict[int, Coordinator] = {}
        self._specs: dict[int, ConnectorSpec] = {}
        self._dirty: dict[int, ConnectorStatus] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    # ---- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        specs = await asyncio.to_thread(self._load_specs)
        for spec in specs:
            await self.apply(spec)
        self._writer = asyncio.create_task(self._write_statuses(), name="connector-status-writer")
        log.info("connector manager started %d connector(s)", len(self._coordinators))

    def _load_specs(self) -> list[ConnectorSpec]:
        with self.database.session() as db:
            return enabled_specs(db)

    async def stop(self) -> None:
        async with self._lock:
            ids = list(self._coordinators)
        for cid in ids:
            await self.remove(cid)
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        await asyncio.to_thread(self._flush)

    # ---- configuration changes ----------------------------------------------------------------

    async def apply(self, spec: ConnectorSpec) -> None:
        """Starts, restarts (new configuration) or stops (disabled) the spec's connector."""
        async with self._lock:
            await self._stop_one(spec.id)
            if not spec.enabled:
                return
            cls = connector_types().get(spec.type)
            if cls is None:
                log.error("connector %s has unknown type %s; not started", spec.id, spec.type)
                return
            try:
                connector = cls(config=cls.validate_config(spec.config), device_id=spec.device_id)
            except Exception as e:  # a row written by an older version may no longer validate
                status = ConnectorStatus(state=ConnectorState.unavailable, last_error=f"invalid configuration: {e}")
                self._dirty[spec.id] = status
                return
            coordinator = Coordinator(connector, sink=self._sink_for(spec), reject=self._reject_for(spec),
                                      on_status=lambda s, cid=spec.id: self._status_changed(cid, s))
            self._coordinators[spec.id] = coordinator
            self._specs[spec.id] = spec
            coordinator.start()

    async def remove(self, connector_id: int) -> None:
        async with self._lock:
            await self._stop_one(connector_id)

    async def _stop_one(self, connector_id: int) -> None:
        coordinator = self._coordinators.pop(connector_id, None)
        self._specs.pop(connector_id, None)
        if coordinator is not None:
            await coordinator.stop()

    def apply_soon(self, spec: ConnectorSpec) -> None:
        """apply() from any thread (the API's sync routes run in a thread pool)."""
        self._call_soon(self.apply(spec))

    def remove_soon(self, connector_id: int) -> None:
        self._call_soon(self.remove(connector_id))

    def _call_soon(self, coro: Any) -> None:
        if self._loop is None or self._loop.is_closed():
            coro.close()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._loop.create_task(coro)
        else:
            asyncio.run_coroutine_threadsafe(coro, self._loop)

    # ---- what coordinators report -------------------------------------------------------------

    def status(self, connector_id: int) -> ConnectorStatus | None:
        coordinator = self._coordinators.get(connector_id)
        return coordinator.status if coordinator is not None else None

    def running_ids(self) -> list[int]:
        return sorted(self._coordinators)

    def _sink_for(self, spec: ConnectorSpec) -> Any:
        ingest, enterprise_id = self.ingest, spec.enterprise_id

        async def sink(points: list[Point]) -> None:
            await ingest.submit(points, enterprise_id=enterprise_id)

        return sink

    def _reject_for(self, spec: ConnectorSpec) -> Any:
        ingest, device_id = self.ingest, spec.device_id

        def reject(reason: str, detail: str) -> None:
            ingest.reject(device_id, reason, f"{spec.type} connector {spec.id}: {detail}")

        return reject

    def _status_changed(self, connector_id: int, status: ConnectorStatus) -> None:
        self._dirty[connector_id] = status

    async def _write_statuses(self) -> None:
        since_success = 0.0
        while True:
            await asyncio.sleep(self.status_flush_s)
            since_success += self.status_flush_s
            if since_success >= self.success_flush_s:
                # last_success_at moves with every delivery; it is persisted at a slower pace.
                since_success = 0.0
                for cid, c in list(self._coordinators.items()):
                    self._dirty.setdefault(cid, c.status)
            if self._dirty:
                try:
                    await asyncio.to_thread(self._flush)
                except Exception:
                    log.exception("could not persist connector status")

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, {}
        if not dirty:
            return
        with self.database.session() as db:
            for cid, status in dirty.items():
                save_status(db, connector_id=cid, status=status)


async def start_connectors(app: FastAPI) -> ConnectorManager:
    """Called from connect's runtime after the ingest pipeline exists."""
    manager = ConnectorManager(database=app.state.db, ingest=app.state.ingest)
    app.state.connectors = manager
    await manager.start()
    return manager


async def stop_connectors(app: FastAPI) -> None:
    manager: ConnectorManager | None = getattr(app.state, "connectors", None)
    if manager is not None:
        await manager.stop()
        app.state.connectors = None


async def start_demo_simulator(app: FastAPI) -> None:
    """`ecoplat demo` (ECOPLAT_DEMO_SIMULATE=1) runs a few simulated devices from
    <data dir>/demo-devices.json against the platform's own MQTT port, so the pages are alive."""
    import os

    from ecoplat.connect.simulator import Simulator, load_devices

    settings = app.state.settings
    app.state.demo_simulator = None
    if os.environ.get("ECOPLAT_DEMO_SIMULATE") != "1" or settings.demo_simulate_devices <= 0:
        return
    path = settings.data_dir / "demo-devices.json"
    if not settings.mqtt_enabled or not path.exists():
        log.info("demo simulator not started (mqtt enabled: %s, %s exists: %s)", settings.mqtt_enabled,
                 path, path.exists())
        return
    try:
        devices = load_devices(path, limit=settings.demo_simulate_devices)
    except (OSError, ValueError):
        log.exception("demo simulator: cannot read %s", path)
        return
    host = settings.mqtt_host if settings.mqtt_host not in ("0.0.0.0", "::") else "127.0.0.1"
    simulator = Simulator(devices, host=host, port=settings.mqtt_port, rate=1.0, seed=1)
    simulator.start()
    app.state.demo_simulator = simulator
    log.info("demo simulator started %d device(s) on mqtt://%s:%s", len(devices), host, settings.mqtt_port)


async def stop_demo_simulator(app: FastAPI) -> None:
    simulator = getattr(app.state, "demo_simulator", None)
    if simulator is not None:
        await simulator.stop()
        app.state.demo_simulator = None
