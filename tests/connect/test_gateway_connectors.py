"""The OPC UA and Modbus connectors against real servers (asyncua's Server, pymodbus's TCP
server) started by the tests: browsing, subscriptions, polling, exact values, and the
"unavailable" state with recovery when the server goes away and comes back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest
from asyncua import ua
from tests.conftest import free_port
from tests.connect.gateway_servers import (
    MODBUS_EXPECTED,
    ModbusTestServer,
    OpcUaTestServer,
    modbus_register_config,
    shared_opcua_server,
)

from ecoplat.connect.gateways.base import ConnectorState, Coordinator, connector_types
from ecoplat.connect.gateways.modbus import ModbusConfig, ModbusConnector, read_once
from ecoplat.connect.gateways.opcua import OpcUaConnector, browse
from ecoplat.telemetry.points import Point

DEVICE_ID = 4242


@pytest.fixture(scope="module")
def opcua_server() -> OpcUaTestServer:
    return shared_opcua_server()


@pytest.fixture
def modbus_server() -> Iterator[ModbusTestServer]:
    server = ModbusTestServer(free_port())
    server.start()
    yield server
    server.close()


async def _until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Collector:
    def __init__(self) -> None:
        self.points: list[Point] = []
        self.rejects: list[tuple[str, str]] = []

    async def sink(self, points: list[Point]) -> None:
        self.points.extend(points)

    def reject(self, reason: str, detail: str) -> None:
        self.rejects.append((reason, detail))

    def latest(self) -> dict[str, object]:
        return {p.key: p.value for p in self.points}


def test_both_connectors_are_registered_as_entry_points() -> None:
    types = connector_types()
    assert types["opcua"] is OpcUaConnector
    assert types["modbus"] is ModbusConnector


# ------------------------------------------------------------------ OPC UA

def test_browse_lists_objects_then_variables_with_data_types(opcua_server: OpcUaTestServer) -> None:
    top = asyncio.run(browse(opcua_server.endpoint))
    by_name = {e.browse_name: e for e in top}
    assert by_name["2:Electrolyzer"].node_id == "ns=2;s=E101"
    assert by_name["2:Electrolyzer"].node_class == "Object"
    assert "0:Server" in by_name

    children = asyncio.run(browse(opcua_server.endpoint, "ns=2;s=E101"))
    got = {e.node_id: (e.browse_name, e.node_class, e.data_type) for e in children}
    assert got == {
        "ns=2;s=E101.CellVoltage": ("2:CellVoltage", "Variable", "Double"),
        "ns=2;s=E101.Current": ("2:Current", "Variable", "Float"),
        "ns=2;s=E101.Running": ("2:Running", "Variable", "Boolean"),
        "ns=2;s=E101.Batch": ("2:Batch", "Variable", "Int32"),
    }


def _opcua_config(endpoint: str, **extra: object) -> dict[str, object]:
    return {
        "endpoint": endpoint, "publishing_interval_ms": 50, "sampling_interval_ms": 10,
        "watchdog_interval_s": 0.2, "timeout_s": 2, "retry_min_s": 0.2, "retry_max_s": 0.5,
        "nodes": [
            {"node_id": "ns=2;s=E101.CellVoltage", "key": "cell_voltage_v"},
            {"node_id": "ns=2;s=E101.Current", "key": "current_ka"},
            {"node_id": "ns=2;s=E101.Running", "key": "running"},
            {"node_id": "ns=2;s=E101.Batch", "key": "batch", "scale": 2, "offset": 1},
        ],
        **extra,
    }


def test_opcua_subscription_delivers_initial_and_changed_values(opcua_server: OpcUaTestServer) -> None:
    collector = Collector()
    connector = OpcUaConnector(config=OpcUaConnector.validate_config(_opcua_config(opcua_server.endpoint)),
                               device_id=DEVICE_ID)

    async def scenario() -> None:
        coordinator = Coordinator(connector, sink=collector.sink, reject=collector.reject)
        coordinator.start()
        try:
            await _until(lambda: len(collector.latest()) == 4, what="initial values")
            assert collector.latest() == {"cell_voltage_v": 3.125, "current_ka": 14.5, "running": True, "batch": 15}
            assert coordinator.status.state is ConnectorState.online
            await asyncio.to_thread(opcua_server.write, "voltage", 3.25, ua.VariantType.Double)
            await asyncio.to_thread(opcua_server.write, "running", False, ua.VariantType.Boolean)
            await _until(lambda: collector.latest()["cell_voltage_v"] == 3.25 and collector.latest()["running"] is False,
                         what="changed values")
        finally:
            await coordinator.stop()
            await asyncio.to_thread(opcua_server.write, "voltage", 3.125, ua.VariantType.Double)
            await asyncio.to_thread(opcua_server.write, "running", True, ua.VariantType.Boolean)

    asyncio.run(scenario())
    assert all(p.device_id == DEVICE_ID for p in collector.points)
    assert collector.rejects == []
    voltages = [p for p in collector.points if p.key == "cell_voltage_v"]
    assert voltages[-1].ts >= voltages[0].ts > 1_700_000_000_000


def test_opcua_unknown_node_is_rejected_but_others_still_flow(opcua_server: OpcUaTestServer) -> None:
    collector = Collector()
    cfg = _opcua_config(opcua_server.endpoint)
    cfg["nodes"] = [{"node_id": "ns=2;s=NoSuchNode", "key": "ghost"},
                    {"node_id": "ns=2;s=E101.Current", "key": "current_ka"}]
    connector = OpcUaConnector(config=OpcUaConnector.validate_config(cfg), device_id=DEVICE_ID)

    async def scenario() -> None:
        coordinator = Coordinator(connector, sink=collector.sink, reject=collector.reject)
        coordinator.start()
        try:
            await _until(lambda: "current_ka" in collector.latest(), what="current")
        finally:
            await coordinator.stop()

    asyncio.run(scenario())
    assert collector.rejects and collector.rejects[0][0] == "bad_node"
    assert "NoSuchNode" in collector.rejects[0][1]


def test_opcua_server_down_goes_unavailable_then_recovers() -> None:
    server = OpcUaTestServer(free_port())
    collector = Collector()
    states: list[ConnectorState] = []
    connector = OpcUaConnector(config=OpcUaConnector.validate_config(_opcua_config(server.endpoint)),
                               device_id=DEVICE_ID)

    async def scenario() -> None:
        coordinator = Coordinator(connector, sink=collector.sink, reject=collector.reject,
                                  on_status=lambda s: states.append(s.state))
        coordinator.start()
        try:
            # Not started yet: the first attempt fails with a clear error.
            await _until(lambda: coordinator.status.state is ConnectorState.unavailable, what="unavailable")
            assert "refused" in (coordinator.status.last_error or "").lower()
            await asyncio.to_thread(server.start)
            await _until(lambda: coordinator.status.state is ConnectorState.online, timeout=15, what="online")
            await _until(lambda: "current_ka" in collector.latest(), what="values")
            await asyncio.to_thread(server.stop)
            await _until(lambda: coordinator.status.state is ConnectorState.unavailable, timeout=15,
                         what="unavailable after loss")
            assert coordinator.status.last_error
            collector.points.clear()
            await asyncio.to_thread(server.start)
            await _until(lambda: "current_ka" in collector.latest(), timeout=20, what="values after recovery")
            assert coordinator.status.state is ConnectorState.online
        finally:
            await coordinator.stop()

    try:
        asyncio.run(scenario())
    finally:
        server.close()
    assert states[-1] is ConnectorState.stopped
    assert ConnectorState.unavailable in states and ConnectorState.online in states


# ------------------------------------------------------------------ Modbus

def _modbus_config(port: int, **extra: object) -> ModbusConfig:
    return ModbusConnector.validate_config({
        "host": "127.0.0.1", "port": port, "unit_id": 1, "poll_interval_ms": 50, "timeout_s": 0.5,
        "retry_min_s": 0.1, "retry_max_s": 0.3, "registers": modbus_register_config(), **extra})


def test_modbus_poll_decodes_every_register_exactly(modbus_server: ModbusTestServer) -> None:
    collector = Collector()
    connector = ModbusConnector(config=_modbus_config(modbus_server.port), device_id=DEVICE_ID)

    async def scenario() -> None:
        coordinator = Coordinator(connector, sink=collector.sink, reject=collector.reject)
        coordinator.start()
        try:
            await _until(lambda: len(collector.latest()) == len(MODBUS_EXPECTED), what="first poll")
            assert coordinator.status.state is ConnectorState.online
            # A value changing on the device shows up on a following poll.
            modbus_server.set_holding(0, [0x41A8, 0xC000])  # 21.09375 big-endian
            await _until(lambda: collector.latest()["cell_voltage_v"] == 21.09375, what="changed register")
        finally:
            await coordinator.stop()

    asyncio.run(scenario())
    first = {}
    for p in collector.points:
        first.setdefault(p.key, p.value)
    assert first == MODBUS_EXPECTED
    assert type(first["runtime_h"]) is int and type(first["pump_running"]) is bool
    # One timestamp per poll for all keys read in it.
    first_ts = {p.ts for p in collector.points[: len(MODBUS_EXPECTED)]}
    assert len(first_ts) == 1


def test_modbus_server_down_goes_unavailable_with_error_then_recovers(modbus_server: ModbusTestServer) -> None:
    collector = Collector()
    connector = ModbusConnector(config=_modbus_config(modbus_server.port), device_id=DEVICE_ID)

    async def scenario() -> None:
        coordinator = Coordinator(connector, sink=collector.sink, reject=collector.reject)
        coordinator.start()
        try:
            await _until(lambda: coordinator.status.points_total > 0, what="first values")
            await asyncio.to_thread(modbus_server.stop)
            await _until(lambda: coordinator.status.state is ConnectorState.unavailable, what="unavailable")
            assert coordinator.status.last_error and str(modbus_server.port) in coordinator.status.last_error
            assert coordinator.status.retry_in_s is not None and coordinator.status.retry_in_s <= 0.3
            # Still unavailable after several retries while the server stays down.
            await _until(lambda: coordinator.status.failures_in_a_row >= 3, what="retries")
            count = coordinator.status.points_total
            await asyncio.to_thread(modbus_server.start)
            await _until(lambda: coordinator.status.points_total > count, what="recovery")
            assert coordinator.status.state is ConnectorState.online
            assert coordinator.status.failures_in_a_row == 0
        finally:
            await coordinator.stop()

    asyncio.run(scenario())


def test_modbus_wrong_unit_id_reports_the_exception_answer(modbus_server: ModbusTestServer) -> None:
    collector = Collector()
    connector = ModbusConnector(config=_modbus_config(modbus_server.port, unit_id=9), device_id=DEVICE_ID)

    async def scenario() -> None:
        coordinator = Coordinator(connector, sink=collector.sink, reject=collector.reject)
        coordinator.start()
        try:
            await _until(lambda: coordinator.status.state is ConnectorState.unavailable, what="unavailable")
        finally:
            await coordinator.stop()

    asyncio.run(scenario())
    assert collector.points == []


def test_modbus_nan_register_is_rejected_and_the_rest_stored(modbus_server: ModbusTestServer) -> None:
    modbus_server.set_holding(0, [0x7FC0, 0x0000])  # float32 NaN
    collector = Collector()
    connector = ModbusConnector(config=_modbus_config(modbus_server.port), device_id=DEVICE_ID)

    async def scenario() -> None:
        coordinator = Coordinator(connector, sink=collector.sink, reject=collector.reject)
        coordinator.start()
        try:
            await _until(lambda: "current_ka" in collector.latest(), what="values")
        finally:
            await coordinator.stop()

    asyncio.run(scenario())
    assert "cell_voltage_v" not in collector.latest()
    assert collector.rejects[0][0] == "bad_value" and "cell_voltage_v" in collector.rejects[0][1]


def test_modbus_test_read_shows_raw_words_and_values(modbus_server: ModbusTestServer) -> None:
    rows = asyncio.run(read_once(_modbus_config(modbus_server.port)))
    by_key = {r["key"]: r for r in rows}
    assert by_key["current_ka"]["raw"] == [0x0000, 0x416C] and by_key["current_ka"]["value"] == 14.75
    assert by_key["dp_kpa"]["value"] == -298.5
    assert by_key["pump_running"] == {"key": "pump_running", "raw": [True], "value": True, "error": None}


def test_modbus_test_read_against_nothing_raises_connection_error() -> None:
    with pytest.raises(ConnectionError, match="cannot connect"):
        asyncio.run(read_once(_modbus_config(free_port())))
