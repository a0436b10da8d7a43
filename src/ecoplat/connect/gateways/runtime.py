"""The connector manager on `app.state.connectors`: runs every enabled connector of every tenant
as an asyncio task (one coordinator per connection), restarts one when its configuration
changes, and persists each connector's state so pages and other processes see it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI

from ecoplat.connect.gateways.base import (
    ConnectorState,
    ConnectorStatus,
    Coordinator,
    connector_types,
)
from ecoplat.connect.gateways.service import (
    ConnectorSpec,
    claim_connectors,
    release_connectors,
    save_status,
)
from ecoplat.db import Database
from ecoplat.telemetry.points import Point

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 5.0


class ConnectorManager:
    """Owns the live coordinators of this process. Each coordinator gets its own connector
    instance built from its own row; nothing tenant-specific is shared.

    Every `reconcile_s` it leases the enabled connectors it may run (see
    service.claim_connectors), starts new ones, restarts those whose configuration version
    changed and stops those disabled, deleted or taken over; so a change made through any API
    process reaches the process that runs the connector, and each connector runs once."""

    def __init__(self, *, database: Database, ingest: Any, reconcile_s: float = 2.0, lease_s: float = 15.0,
                 status_flush_s: float = 1.0, success_flush_s: float = 10.0, owner: str | None = None,
                 events: Any = None) -> None:
        self.database = database
        self.ingest = ingest
        self.events = events
        self.reconcile_s = reconcile_s
        self.lease_s = max(lease_s, reconcile_s * 3)
        self.status_flush_s = status_flush_s
        self.success_flush_s = success_flush_s
        self.owner = owner or f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(4)}"
        self._coordinators: dict[int, Coordinator] = {}
        self._specs: dict[int, ConnectorSpec] = {}
        self._dirty: dict[int, ConnectorStatus] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.reconcile()
        self._tasks = [asyncio.create_task(self._reconcile_loop(), name="connector-reconcile"),
                       asyncio.create_task(self._write_statuses(), name="connector-status-writer")]
        log.info("connector manager %s runs %d connector(s)", self.owner, len(self._coordinators))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded: shutting the platform down must not hang on a stuck background task.
            _, stuck = await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT_S)
            for task in stuck:
                log.warning("connector manager task %s did not stop in %s s", task.get_name(), STOP_TIMEOUT_S)
        self._tasks = []
        for cid in list(self._coordinators):
            await self._stop_one(cid)
        self._dirty.clear()
        await asyncio.to_thread(self._release)

    def _release(self) -> None:
        with self.database.session() as db:
            release_connectors(db, owner=self.owner)

    # ---- following the database ---------------------------------------------------------------

    def _claim(self) -> list[ConnectorSpec]:
        with self.database.session() as db:
            return claim_connectors(db, owner=self.owner, lease_s=self.lease_s)

    async def reconcile(self) -> None:
        """Runs exactly the connectors this process holds the lease of, each with its newest
        configuration."""
        specs = {s.id: s for s in await asyncio.to_thread(self._claim)}
        for cid in list(self._coordinators):
            if cid not in specs:
                await self._stop_one(cid)
        for cid, spec in specs.items():
            running = self._specs.get(cid)
            if running is None or running.version != spec.version or cid not in self._coordinators:
                await self._start_one(spec)

    async def _reconcile_loop(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can lose a cancellation that
            # arrives as the timeout fires, and stop() would then wait for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.reconcile_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.reconcile()
            except Exception:
                # The database may be briefly unreachable; connectors keep running meanwhile.
                log.exception("connector reconcile failed; retrying")

    def changed_soon(self, delay_s: float = 0.3) -> None:
        """A change was just written (its transaction commits when the request ends): reconcile
        shortly instead of waiting for the next period. Callable from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(lambda: loop.call_later(delay_s, self._wake.set))

    # ---- one connector ------------------------------------------------------------------------

    async def _start_one(self, spec: ConnectorSpec) -> None:
        await self._stop_one(spec.id)
        cls = connector_types().get(spec.type)
        if cls is None:
            self._specs[spec.id] = spec
            self._dirty[spec.id] = ConnectorStatus(state=ConnectorState.unavailable,
                                                   last_error=f"connector type '{spec.type}' is not installed",
                                                   last_error_at=datetime.now(UTC))
            return
        try:
            connector = cls(config=cls.validate_config(spec.config), device_id=spec.device_id)
        except Exception as e:  # a row written by an older version may no longer validate
            self._specs[spec.id] = spec
            self._dirty[spec.id] = ConnectorStatus(state=ConnectorState.unavailable,
                                                   last_error=f"invalid configuration: {e}",
                                                   last_error_at=datetime.now(UTC))
            return
        coordinator = Coordinator(connector, sink=self._sink_for(spec), reject=self._reject_for(spec),
                                  on_status=lambda s, sp=spec: self._status_changed(sp, s))
        self._coordinators[spec.id] = coordinator
        self._specs[spec.id] = spec
        coordinator.start()

    async def _stop_one(self, connector_id: int) -> None:
        coordinator = self._coordinators.pop(connector_id, None)
        self._specs.pop(connector_id, None)
        if coordinator is not None:
            await coordinator.stop()

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

    def _status_changed(self, spec: ConnectorSpec, status: ConnectorStatus) -> None:
        self._dirty[spec.id] = status
        if self.events is not None:
            # Topic connector.<enterprise>.<connector>: pages and notifications can follow a
            # connector going unavailable without polling.
            self.events.publish(f"connector.{spec.enterprise_id}.{spec.id}",
                                {"connector_id": spec.id, "device_id": spec.device_id, **status.as_dict()})

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
                save_status(db, connector_id=cid, status=status, owner=self.owner)


async def start_connectors(app: FastAPI) -> ConnectorManager:
    """Called from connect's runtime after the ingest pipeline exists."""
    manager = ConnectorManager(database=app.state.db, ingest=app.state.ingest, events=app.state.events)
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
