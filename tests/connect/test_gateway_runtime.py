"""End to end through the running platform (the app's real lifespan: telemetry store, ingest
pipeline, connector manager): a connector configured over the API polls or subscribes to a real
server, and the values read back over REST are exact; server loss shows as "unavailable" with
the error, and the connector recovers and follows configuration changes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from asyncua import ua
from fastapi.testclient import TestClient
from tests.conftest import free_port
from tests.connect.gateway_servers import (
    MODBUS_EXPECTED,
    ModbusTestServer,
    modbus_register_config,
    shared_opcua_server,
)
from tests.connect.mqtt_support import platform_settings, running_platform, seed_tenant


def wait_for(fn: Callable[[], Any], *, timeout: float = 20.0, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def _latest(client: TestClient, headers: dict[str, str], device_id: int) -> dict[str, Any]:
    r = client.get(f"/api/devices/{device_id}/telemetry/latest", headers=headers)
    assert r.status_code == 200, r.text
    return {k: v for k, v in r.json().items()}


def _status(client: TestClient, headers: dict[str, str], cid: int) -> dict[str, Any]:
    r = client.get(f"/api/connectors/{cid}/status", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def test_modbus_connector_feeds_the_store_survives_server_loss_and_follows_changes(
        fresh_database_url: str, tmp_path: Path) -> None:
    tenant = seed_tenant(fresh_database_url, devices=("tank-farm-plc",))
    device_id, _ = tenant.device("tank-farm-plc")
    server = ModbusTestServer(free_port())
    server.start()
    settings = platform_settings(fresh_database_url, tmp_path / "var", mqtt_enabled=False)
    try:
        with running_platform(settings) as client:
            events: list[tuple[str, str]] = []
            client.app.state.events.add_listener("connector.", lambda e: events.append((e.topic, e.data["state"])))
            h = tenant.headers
            config = {"host": "127.0.0.1", "port": server.port, "poll_interval_ms": 100, "timeout_s": 0.5,
                      "retry_min_s": 0.1, "retry_max_s": 0.3, "registers": modbus_register_config()}
            r = client.post("/api/connectors", json={"name": "PLC", "device_id": device_id, "type": "modbus",
                                                     "config": config}, headers=h)
            assert r.status_code == 201, r.text
            cid = r.json()["id"]

            latest = wait_for(lambda: (lambda v: v if len(v) == len(MODBUS_EXPECTED) else None)(
                _latest(client, h, device_id)), what="every register stored")
            assert {k: v["value"] for k, v in latest.items()} == MODBUS_EXPECTED
            assert _status(client, h, cid)["state"] == "online"

            # The server goes away: unavailable, with the error, and no new values.
            server.stop()
            st = wait_for(lambda: (lambda s: s if s["state"] == "unavailable" else None)(_status(client, h, cid)),
                          what="unavailable")
            assert str(server.port) in st["last_error"] and st["running"] is True
            # The stored row follows (pages and other processes read it).
            wait_for(lambda: client.get(f"/api/connectors/{cid}", headers=h).json()["status"] == "unavailable",
                     what="stored status")

            # Back: recovers by itself, values flow again.
            before = _latest(client, h, device_id)["current_ka"]["ts"]
            server.start()
            wait_for(lambda: _latest(client, h, device_id)["current_ka"]["ts"] > before, what="recovery")
            assert _status(client, h, cid)["state"] == "online"
            # Each state change went out on the event bus under the tenant's topic.
            topic = f"connector.{tenant.enterprise_id}.{cid}"
            states = [state for t, state in events if t == topic]
            assert states[:2] == ["starting", "online"] and "unavailable" in states and states[-1] == "online"

            # A configuration change restarts the connector with the new register map.
            config["registers"] = [{"key": "dp_kpa", "address": 8, "data_type": "int16", "scale": 0.5}]
            r = client.patch(f"/api/connectors/{cid}", json={"config": config}, headers=h)
            assert r.status_code == 200, r.text
            wait_for(lambda: _latest(client, h, device_id)["dp_kpa"]["value"] == -617.0, what="new scale applied")

            # Stopped: the manager no longer runs it.
            assert client.post(f"/api/connectors/{cid}/stop", headers=h).status_code == 200
            wait_for(lambda: _status(client, h, cid)["running"] is False, what="stopped")

            # A poll submitted just before the stop still becomes durable (on a busy machine, more
            # than 0.3 s later): wait until no value has come for ten poll intervals, then no more
            # may come. A connector still polling every 100 ms would never go quiet that long.
            def quiet() -> int | None:
                ts = _latest(client, h, device_id)["dp_kpa"]["ts"]
                time.sleep(1.0)
                return ts if _latest(client, h, device_id)["dp_kpa"]["ts"] == ts else None

            stopped_at = wait_for(quiet, what="no values after the stop")
            time.sleep(1.0)
            assert _latest(client, h, device_id)["dp_kpa"]["ts"] == stopped_at
    finally:
        server.close()


def test_enabled_connectors_start_with_the_platform_and_opcua_values_arrive(
        fresh_database_url: str, tmp_path: Path) -> None:
    opcua = shared_opcua_server()
    tenant = seed_tenant(fresh_database_url, devices=("cell-room-ua",))
    device_id, _ = tenant.device("cell-room-ua")
    settings = platform_settings(fresh_database_url, tmp_path / "var", mqtt_enabled=False)
    config = {"endpoint": opcua.endpoint, "publishing_interval_ms": 50, "sampling_interval_ms": 10,
              "nodes": [{"node_id": "ns=2;s=E101.CellVoltage", "key": "cell_voltage_v"},
                        {"node_id": "ns=2;s=E101.Current", "key": "current_ka"},
                        {"node_id": "ns=2;s=E101.Running", "key": "running"}]}
    with running_platform(settings) as client:
        r = client.post("/api/connectors", json={"name": "UA", "device_id": device_id, "type": "opcua",
                                                 "config": config}, headers=tenant.headers)
        assert r.status_code == 201, r.text

    # A new platform process (same database) starts the enabled connector on its own.
    with running_platform(settings) as client:
        h = tenant.headers
        latest = wait_for(lambda: (lambda v: v if len(v) == 3 else None)(_latest(client, h, device_id)),
                          what="OPC UA values stored")
        assert {k: v["value"] for k, v in latest.items()} == {"cell_voltage_v": 3.125, "current_ka": 14.5,
                                                              "running": True}
        opcua.write("current", 15.25, ua.VariantType.Float)
        try:
            wait_for(lambda: _latest(client, h, device_id)["current_ka"]["value"] == 15.25, what="changed value")
            r = client.get(f"/api/devices/{device_id}/telemetry", params={"keys": "current_ka", "start": 0},
                           headers=h)
            assert [s["value"] for s in r.json()["current_ka"]][-2:] == [14.5, 15.25]
        finally:
            opcua.write("current", 14.5, ua.VariantType.Float)


def test_several_platform_processes_run_each_connector_once_and_take_over(real_db, pipeline, store) -> None:  # type: ignore[no-untyped-def]
    """Scaled out, every process runs a ConnectorManager on the same database: the lease makes
    each connector run in exactly one, a clean stop hands it over at once, a crashed owner's
    lease runs out, and a configuration change reaches whichever process runs it."""
    from tests.connect.builders import make_actor
    from tests.connect.gateway_builders import make_connector, make_device

    from ecoplat.connect.gateways.models import ConnectorConfig
    from ecoplat.connect.gateways.runtime import ConnectorManager

    server = ModbusTestServer(free_port())
    server.start()
    config = {"host": "127.0.0.1", "port": server.port, "poll_interval_ms": 50, "timeout_s": 0.5,
              "retry_min_s": 0.1, "retry_max_s": 0.2,
              "registers": [{"key": "current_ka", "address": 2, "data_type": "float32", "byte_order": "CDAB"}]}
    with real_db.session() as s:
        enterprise_id = make_actor(s).enterprise_id
        device_id = make_device(s, enterprise_id).id
        cid = make_connector(s, enterprise_id, device_id=device_id, config=config, enabled=True).id

    def latest_ts() -> int:
        sample = store.latest(device_id).get("current_ka")
        return sample.ts if sample else 0

    async def until(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)

    def make(owner: str) -> ConnectorManager:
        return ConnectorManager(database=real_db, ingest=pipeline, reconcile_s=0.1, lease_s=3.0,
                                status_flush_s=0.1, owner=owner)

    async def scenario() -> None:
        a, b = make("A"), make("B")
        await a.start()
        await b.start()
        try:
            assert (a.running_ids(), b.running_ids()) == ([cid], [])
            await until(lambda: latest_ts() > 0, "values through A")
            await asyncio.sleep(0.3)
            assert b.running_ids() == []  # B keeps off while A holds the lease

            await a.stop()  # clean stop: the lease is released
            mark = latest_ts()
            await until(lambda: b.running_ids() == [cid], "B takes over")
            await until(lambda: latest_ts() > mark, "values through B")

            # A change written anywhere (here straight to the database) reaches B.
            with real_db.session() as s:
                row = s.get(ConnectorConfig, cid)
                row.config = dict(row.config, registers=[dict(config["registers"][0], scale=2.0)])
                row.config_version += 1
            await until(lambda: store.latest(device_id)["current_ka"].value == 29.5, "new configuration on B")

            # B dies without releasing: C takes over only once B's lease has run out.
            for task in b._tasks:
                task.cancel()
            for coordinator in list(b._coordinators.values()):
                await coordinator.stop()
            with real_db.session() as s:
                lease_until = s.get(ConnectorConfig, cid).lease_until
            c = make("C")
            await c.start()
            try:
                # Judged against the lease B left, not the wall time the stop took on a busy machine.
                if datetime.now(UTC) < lease_until - timedelta(seconds=0.2):
                    assert c.running_ids() == []
                await until(lambda: c.running_ids() == [cid], "C takes over after the lease", timeout=8)
                assert datetime.now(UTC) >= lease_until
                with real_db.session() as s:
                    assert s.get(ConnectorConfig, cid).owner == "C"
            finally:
                await c.stop()
        finally:
            await a.stop()

    try:
        asyncio.run(scenario())
    finally:
        server.close()
