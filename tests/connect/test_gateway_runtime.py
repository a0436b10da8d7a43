"""End to end through the running platform (the app's real lifespan: telemetry store, ingest
pipeline, connector manager): a connector configured over the API polls or subscribes to a real
server, and the values read back over REST are exact; server loss shows as "unavailable" with
the error, and the connector recovers and follows configuration changes."""

from __future__ import annotations

import time
from collections.abc import Callable
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

            # A configuration change restarts the connector with the new register map.
            config["registers"] = [{"key": "dp_kpa", "address": 8, "data_type": "int16", "scale": 0.5}]
            r = client.patch(f"/api/connectors/{cid}", json={"config": config}, headers=h)
            assert r.status_code == 200, r.text
            wait_for(lambda: _latest(client, h, device_id)["dp_kpa"]["value"] == -617.0, what="new scale applied")

            # Stopped: the manager no longer runs it.
            assert client.post(f"/api/connectors/{cid}/stop", headers=h).status_code == 200
            wait_for(lambda: _status(client, h, cid)["running"] is False, what="stopped")
            stopped_at = _latest(client, h, device_id)["dp_kpa"]["ts"]
            time.sleep(0.4)
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
