"""Modbus TCP connector (pymodbus): polls holding/input registers, coils and discrete inputs and
turns them into telemetry.

Decoding is pure: `decode_registers` turns 16-bit register words into a value for a data type and
byte order, `plan_reads` groups a register map into as few requests as the protocol allows.

Byte orders are named by where the bytes of the big-endian value A B C D land on the wire, as
device manuals do: ABCD big-endian (Modbus's own order, MODBUS Application Protocol v1.1b3 §4.2),
CDAB word-swapped (common on PLCs storing 32-bit values low word first), BADC byte-swapped inside
each word, DCBA fully little-endian. The same two swaps apply to 64-bit values (four words)."""

from __future__ import annotations

import asyncio
import enum
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from ecoplat.connect.gateways.base import (
    KEY_PATTERN,
    Connector,
    ConnectorSession,
    ConnectorSettings,
    now_ms,
    plain_value,
)
from ecoplat.telemetry.points import Point

# Largest single reads the protocol allows (MODBUS Application Protocol v1.1b3 §6.1-6.4).
MAX_REGISTERS_PER_READ = 125
MAX_BITS_PER_READ = 2000


class DataType(enum.StrEnum):
    int16 = "int16"
    uint16 = "uint16"
    int32 = "int32"
    uint32 = "uint32"
    float32 = "float32"
    float64 = "float64"
    bool = "bool"


class ByteOrder(enum.StrEnum):
    ABCD = "ABCD"
    CDAB = "CDAB"
    BADC = "BADC"
    DCBA = "DCBA"


class RegisterTable(enum.StrEnum):
    holding = "holding"
    input = "input"
    coil = "coil"
    discrete_input = "discrete_input"

    @property
    def is_bits(self) -> bool:
        return self in (RegisterTable.coil, RegisterTable.discrete_input)


@dataclass(frozen=True, kw_only=True)
class DataTypeDescription:
    """How one data type sits in registers: how many words and the struct code of its
    big-endian bytes."""

    data_type: DataType
    registers: int
    struct_code: str
    value_fn: Callable[[Any], int | float | bool]


DATA_TYPES: dict[DataType, DataTypeDescription] = {d.data_type: d for d in (
    DataTypeDescription(data_type=DataType.int16, registers=1, struct_code="h", value_fn=int),
    DataTypeDescription(data_type=DataType.uint16, registers=1, struct_code="H", value_fn=int),
    DataTypeDescription(data_type=DataType.int32, registers=2, struct_code="i", value_fn=int),
    DataTypeDescription(data_type=DataType.uint32, registers=2, struct_code="I", value_fn=int),
    DataTypeDescription(data_type=DataType.float32, registers=2, struct_code="f", value_fn=float),
    DataTypeDescription(data_type=DataType.float64, registers=4, struct_code="d", value_fn=float),
    # A bool kept in a register is "any bit set" (the usual convention of status words).
    DataTypeDescription(data_type=DataType.bool, registers=1, struct_code="H", value_fn=bool),
)}


def register_count(data_type: DataType) -> int:
    return DATA_TYPES[data_type].registers


def _swaps(order: ByteOrder) -> tuple[bool, bool]:
    """(swap bytes inside each word, reverse the word order)."""
    return order in (ByteOrder.BADC, ByteOrder.DCBA), order in (ByteOrder.CDAB, ByteOrder.DCBA)


def registers_to_bytes(registers: Sequence[int], order: ByteOrder) -> bytes:
    """The value's big-endian bytes (A B C D …) from the words as they came off the wire."""
    swap_bytes, swap_words = _swaps(order)
    words = list(registers)
    if swap_words:
        words.reverse()
    out = bytearray()
    for w in words:
        if not 0 <= w <= 0xFFFF:
            raise ValueError(f"register value {w} is not a 16-bit word")
        hi, lo = w >> 8, w & 0xFF
        out += bytes((lo, hi)) if swap_bytes else bytes((hi, lo))
    return bytes(out)


def bytes_to_registers(data: bytes, order: ByteOrder) -> list[int]:
    """The inverse of registers_to_bytes: words to put on the wire for big-endian bytes."""
    swap_bytes, swap_words = _swaps(order)
    words = []
    for i in range(0, len(data), 2):
        hi, lo = data[i], data[i + 1]
        words.append((lo << 8 | hi) if swap_bytes else (hi << 8 | lo))
    if swap_words:
        words.reverse()
    return words


def decode_registers(registers: Sequence[int], data_type: DataType,
                     order: ByteOrder = ByteOrder.ABCD) -> int | float | bool:
    """Registers (16-bit words in wire order) → the value they hold."""
    desc = DATA_TYPES[data_type]
    if len(registers) != desc.registers:
        raise ValueError(f"{data_type} needs {desc.registers} register(s), got {len(registers)}")
    (raw,) = struct.unpack(">" + desc.struct_code, registers_to_bytes(registers, order))
    return desc.value_fn(raw)


def encode_value(value: float | int | bool, data_type: DataType,
                 order: ByteOrder = ByteOrder.ABCD) -> list[int]:
    """The value → registers in wire order (for writing, and for simulating a device)."""
    desc = DATA_TYPES[data_type]
    if data_type is DataType.bool:
        value = 1 if value else 0
    elif desc.value_fn is int:
        value = int(value)
    return bytes_to_registers(struct.pack(">" + desc.struct_code, value), order)


def scale_value(raw: int | float | bool, scale: float, offset: float) -> int | float | bool:
    """Engineering value = raw × scale + offset; left untouched when there is nothing to do,
    so integers and booleans stay what they are."""
    if isinstance(raw, bool) or (scale == 1 and offset == 0):
        return raw
    return raw * scale + offset


class RegisterConfig(BaseModel):
    """One telemetry key read from the device's register map."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(pattern=KEY_PATTERN, description="Telemetry key the value is stored under.")
    table: RegisterTable = Field(default=RegisterTable.holding)
    address: int = Field(ge=0, le=65535, description="Zero-based address (PDU address), e.g. 0 for 40001.")
    data_type: DataType = DataType.uint16
    byte_order: ByteOrder = ByteOrder.ABCD
    scale: float = Field(default=1.0, allow_inf_nan=False)
    offset: float = Field(default=0.0, allow_inf_nan=False)
    bit: int | None = Field(default=None, ge=0, le=15,
                            description="For a bool kept in one bit of a status word: 0 (least significant) to 15.")

    @model_validator(mode="after")
    def _fits(self) -> RegisterConfig:
        if self.table.is_bits and self.data_type is not DataType.bool:
            raise ValueError(f"{self.table.value} holds single bits; use data_type 'bool'")
        if self.bit is not None and (self.table.is_bits or self.data_type is not DataType.bool):
            raise ValueError("bit applies to data_type 'bool' read from a holding or input register")
        if not self.table.is_bits and self.address + register_count(self.data_type) > 65536:
            raise ValueError("the value runs past the last register address (65535)")
        return self

    @property
    def width(self) -> int:
        return 1 if self.table.is_bits else register_count(self.data_type)


class ModbusConfig(ConnectorSettings):
    host: str = Field(min_length=1, max_length=253, description="Address of the Modbus TCP server or gateway.")
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255, description="Unit (slave) id behind a gateway; 1 for most devices.")
    poll_interval_ms: int = Field(default=1000, ge=50, le=86_400_000)
    timeout_s: float = Field(default=3.0, gt=0, le=60)
    registers: list[RegisterConfig] = Field(min_length=1, max_length=2000)

    @field_validator("registers")
    @classmethod
    def _unique_keys(cls, v: list[RegisterConfig]) -> list[RegisterConfig]:
        seen: set[str] = set()
        for r in v:
            if r.key in seen:
                raise ValueError(f"key '{r.key}' is mapped twice")
            seen.add(r.key)
        return v


@dataclass(frozen=True, kw_only=True)
class ReadBlock:
    """One request: a contiguous span of one table and the registers decoded from it."""

    table: RegisterTable
    address: int
    count: int
    items: tuple[RegisterConfig, ...]


def plan_reads(registers: Sequence[RegisterConfig], *, max_gap: int = 8) -> list[ReadBlock]:
    """Groups the map into as few reads as possible: neighbours in one table (gaps up to
    `max_gap` read and thrown away, cheaper than another round trip) within the protocol's limit."""
    blocks: list[ReadBlock] = []
    for table in RegisterTable:
        limit = MAX_BITS_PER_READ if table.is_bits else MAX_REGISTERS_PER_READ
        items = sorted((r for r in registers if r.table is table), key=lambda r: r.address)
        start = end = -1
        group: list[RegisterConfig] = []
        for r in items:
            r_end = r.address + r.width
            if group and r.address - end <= max_gap and max(end, r_end) - start <= limit:
                end = max(end, r_end)
                group.append(r)
                continue
            if group:
                blocks.append(ReadBlock(table=table, address=start, count=end - start, items=tuple(group)))
            start, end, group = r.address, r_end, [r]
        if group:
            blocks.append(ReadBlock(table=table, address=start, count=end - start, items=tuple(group)))
    return blocks


def decode_block(block: ReadBlock, words_or_bits: Sequence[int | bool]) -> list[tuple[RegisterConfig, Any]]:
    """The (register, engineering value) pairs of one answered read."""
    out: list[tuple[RegisterConfig, Any]] = []
    for r in block.items:
        i = r.address - block.address
        if block.table.is_bits:
            raw: int | float | bool = bool(words_or_bits[i])
        elif r.bit is not None:
            raw = bool((int(words_or_bits[i]) >> r.bit) & 1)
        else:
            raw = decode_registers([int(w) for w in words_or_bits[i:i + r.width]], r.data_type, r.byte_order)
        out.append((r, scale_value(raw, r.scale, r.offset)))
    return out


class ModbusReadError(Exception):
    pass


async def read_block(client: AsyncModbusTcpClient, block: ReadBlock, unit_id: int) -> list[int | bool]:
    readers = {
        RegisterTable.holding: client.read_holding_registers,
        RegisterTable.input: client.read_input_registers,
        RegisterTable.coil: client.read_coils,
        RegisterTable.discrete_input: client.read_discrete_inputs,
    }
    result = await readers[block.table](block.address, count=block.count, device_id=unit_id)
    if result.isError():
        code = getattr(result, "exception_code", None)
        raise ModbusReadError(f"the device answered exception {code} to reading {block.count} "
                              f"{block.table.value} register(s) at {block.address} (unit {unit_id})")
    if block.table.is_bits:
        return list(result.bits[:block.count])
    return list(result.registers)


def _client(config: ModbusConfig) -> AsyncModbusTcpClient:
    # reconnect_delay=0: pymodbus must not reconnect on its own; the coordinator owns retries
    # and reports the connection as unavailable meanwhile.
    return AsyncModbusTcpClient(config.host, port=config.port, timeout=config.timeout_s, retries=0,
                                reconnect_delay=0)


async def poll_once(client: AsyncModbusTcpClient, config: ModbusConfig,
                    blocks: Sequence[ReadBlock]) -> list[tuple[RegisterConfig, Any]]:
    values: list[tuple[RegisterConfig, Any]] = []
    for block in blocks:
        values.extend(decode_block(block, await read_block(client, block, config.unit_id)))
    return values


class ModbusConnector(Connector[ModbusConfig]):
    type_name = "modbus"
    title = "Modbus TCP"
    config_model = ModbusConfig

    async def run(self, session: ConnectorSession) -> None:
        config = self.config
        blocks = plan_reads(config.registers)
        client = _client(config)
        try:
            if not await client.connect():
                raise ConnectionError(f"cannot connect to Modbus server {config.host}:{config.port}")
            session.connected()
            interval = config.poll_interval_ms / 1000
            next_at = time.monotonic()
            while True:
                ts = now_ms()
                try:
                    values = await poll_once(client, config, blocks)
                except ModbusException as e:
                    raise ConnectionError(f"Modbus server {config.host}:{config.port}: {e}") from e
                points = []
                for reg, value in values:
                    v = plain_value(value)
                    if v is None:
                        session.reject("bad_value", f"{reg.key}: {value!r} is not a finite number")
                        continue
                    points.append(Point(self.device_id, reg.key, ts, v))
                await session.publish(points)
                # Fixed-rate schedule: a slow read shortens the next wait instead of drifting.
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                if time.monotonic() - next_at > interval:
                    next_at = time.monotonic()
        finally:
            client.close()


async def read_once(config: ModbusConfig) -> list[dict[str, Any]]:
    """Reads every mapped register once and returns key, raw words and value (the "test read"
    of the configuration form). Connection problems raise; exception answers are reported."""
    client = _client(config)
    try:
        if not await client.connect():
            raise ConnectionError(f"cannot connect to Modbus server {config.host}:{config.port}")
        out: list[dict[str, Any]] = []
        for block in plan_reads(config.registers):
            try:
                raw = await read_block(client, block, config.unit_id)
            except ModbusReadError as e:
                out.extend({"key": r.key, "raw": None, "value": None, "error": str(e)} for r in block.items)
                continue
            for reg, value in decode_block(block, raw):
                i = reg.address - block.address
                words = [bool(b) for b in raw[i:i + 1]] if block.table.is_bits else [int(w) for w in raw[i:i + reg.width]]
                out.append({"key": reg.key, "raw": words, "value": plain_value(value), "error": None})
        return out
    except ModbusException as e:
        raise ConnectionError(f"Modbus server {config.host}:{config.port}: {e}") from e
    finally:
        client.close()
