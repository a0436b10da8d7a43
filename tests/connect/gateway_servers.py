"""Real OPC UA and Modbus TCP servers for the gateway tests, each running on its own event loop
in a background thread so module-scoped fixtures can share them across sync and async tests."""

from __future__ import annotations

import asyncio
import atexit
import logging
import socket
import threading
from collections.abc import Coroutine
from functools import cache
from typing import Any, TypeVar

from asyncua import Server, ua
from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import ModbusTcpServer

from ecoplat.connect.gateways.modbus import ByteOrder, DataType, encode_value

T = TypeVar("T")

for noisy in ("asyncua", "pymodbus"):
    logging.getLogger(noisy).setLevel(logging.ERROR)


class LoopThread:
    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def _cancel_rest() -> None:
            # Server internals (session timeouts, subscription loops) outlive stop(); cancel
            # them so the loop closes cleanly instead of destroying pending tasks.
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        if self.loop.is_running():
            self.run(_cancel_rest(), timeout=10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


# ------------------------------------------------------------------ Modbus

# Known register contents: (key, table, address, data type, byte order, scale, offset, raw, expected).
MODBUS_MAP: list[dict[str, Any]] = [
    {"key": "cell_voltage_v", "address": 0, "data_type": "float32", "byte_order": "ABCD", "raw": 3.125},
    {"key": "current_ka", "address": 2, "data_type": "float32", "byte_order": "CDAB", "raw": 14.75},
    {"key": "anolyte_temp_c", "address": 4, "data_type": "float32", "byte_order": "BADC", "raw": 87.5},
    {"key": "naoh_pct", "address": 6, "data_type": "float32", "byte_order": "DCBA", "raw": 32.25},
    # int16 in tenths of a kPa with an offset: -125 × 0.1 … chosen so the result is exact in binary.
    {"key": "dp_kpa", "address": 8, "data_type": "int16", "raw": -1234, "scale": 0.25, "offset": 10},
    {"key": "runtime_h", "address": 10, "data_type": "uint32", "byte_order": "CDAB", "raw": 100_000},
    {"key": "energy_kwh", "address": 12, "data_type": "float64", "byte_order": "DCBA", "raw": 123456.78125},
]
MODBUS_EXPECTED = {
    "cell_voltage_v": 3.125, "current_ka": 14.75, "anolyte_temp_c": 87.5, "naoh_pct": 32.25,
    "dp_kpa": -298.5, "runtime_h": 100_000, "energy_kwh": 123456.78125,
    "level_pct": 420, "pump_running": True, "high_level_switch": False,
}
EXTRA_REGISTERS: list[dict[str, Any]] = [
    {"key": "level_pct", "table": "input", "address": 1, "data_type": "uint16"},
    {"key": "pump_running", "table": "coil", "address": 2, "data_type": "bool"},
    {"key": "high_level_switch", "table": "discrete_input", "address": 5, "data_type": "bool"},
]


def modbus_register_config() -> list[dict[str, Any]]:
    out = []
    for r in MODBUS_MAP:
        out.append({k: v for k, v in r.items() if k != "raw"})
    return out + EXTRA_REGISTERS


def _holding_words() -> list[int]:
    words = [0] * 32
    for r in MODBUS_MAP:
        enc = encode_value(r["raw"], DataType(r["data_type"]), ByteOrder(r.get("byte_order", "ABCD")))
        words[r["address"]:r["address"] + len(enc)] = enc
    return words


class ModbusTestServer:
    """pymodbus's TCP server with a datastore holding the registers above (unit id 1)."""

    def __init__(self, port: int, unit_id: int = 1) -> None:
        self.port = port
        self.unit_id = unit_id
        self.loops = LoopThread("modbus-test-server")
        inputs = [0] * 16
        inputs[1] = 420
        coils = [0] * 16
        coils[2] = 1
        discrete = [0] * 16
        # pymodbus' legacy datastore adds 1 to every request address, hence blocks starting at 1.
        self.device = ModbusDeviceContext(
            hr=ModbusSequentialDataBlock(1, _holding_words()),
            ir=ModbusSequentialDataBlock(1, inputs),
            co=ModbusSequentialDataBlock(1, coils),
            di=ModbusSequentialDataBlock(1, discrete),
        )
        self.context = ModbusServerContext(devices={unit_id: self.device}, single=False)
        self.server: ModbusTcpServer | None = None

    def set_holding(self, address: int, words: list[int]) -> None:
        """Changes holding registers while the server runs, as the device would."""
        assert self.server is not None
        self.loops.run(self.server.async_setValues(self.unit_id, 16, address, words))

    def start(self) -> None:
        async def _start() -> None:
            self.server = ModbusTcpServer(self.context, address=("127.0.0.1", self.port))
            await self.server.listen()

        self.loops.run(_start())

    def stop(self) -> None:
        async def _stop() -> None:
            if self.server is not None:
                await self.server.shutdown()
                self.server = None

        self.loops.run(_stop())

    def close(self) -> None:
        self.stop()
        self.loops.close()


# ------------------------------------------------------------------ OPC UA

class OpcUaTestServer:
    """asyncua's server with an electrolyzer object and a few variables, namespace 2."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.endpoint = f"opc.tcp://127.0.0.1:{port}/ecoplat/"
        self.loops = LoopThread("opcua-test-server")
        self.server: Server | None = None
        self.nodes: dict[str, Any] = {}

    def start(self) -> None:
        self.loops.run(self._start(), timeout=60)

    async def _start(self) -> None:
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("Ecoplat test server")
        idx = await server.register_namespace("urn:ecoplat:test")
        if idx != 2:
            raise RuntimeError(f"expected namespace index 2, got {idx}")
        electrolyzer = await server.nodes.objects.add_object(ua.NodeId("E101", idx), f"{idx}:Electrolyzer")
        self.nodes["voltage"] = await electrolyzer.add_variable(
            ua.NodeId("E101.CellVoltage", idx), f"{idx}:CellVoltage", ua.Variant(3.125, ua.VariantType.Double))
        self.nodes["current"] = await electrolyzer.add_variable(
            ua.NodeId("E101.Current", idx), f"{idx}:Current", ua.Variant(14.5, ua.VariantType.Float))
        self.nodes["running"] = await electrolyzer.add_variable(
            ua.NodeId("E101.Running", idx), f"{idx}:Running", ua.Variant(True, ua.VariantType.Boolean))
        self.nodes["batch"] = await electrolyzer.add_variable(
            ua.NodeId("E101.Batch", idx), f"{idx}:Batch", ua.Variant(7, ua.VariantType.Int32))
        self.server = server
        await server.start()

    def write(self, name: str, value: Any, variant: ua.VariantType) -> None:
        self.loops.run(self.nodes[name].write_value(ua.DataValue(ua.Variant(value, variant))))

    def stop(self) -> None:
        async def _stop() -> None:
            if self.server is not None:
                await self.server.stop()
                self.server = None

        self.loops.run(_stop())

    def close(self) -> None:
        self.stop()
        self.loops.close()


@cache
def shared_opcua_server() -> OpcUaTestServer:
    """One OPC UA server for every test module that only reads from it (it takes seconds to
    start); stopped when the test run ends."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = OpcUaTestServer(port)
    server.start()
    atexit.register(server.close)
    return server
