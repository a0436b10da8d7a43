"""Pure Modbus decoding: registers → values for every data type and byte/word order, the
register map validation, and read planning."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecoplat.connect.gateways.modbus import (
    ByteOrder,
    DataType,
    ModbusConfig,
    RegisterConfig,
    RegisterTable,
    decode_block,
    decode_registers,
    encode_value,
    plan_reads,
    scale_value,
)
from ecoplat.errors import Unprocessable

# 0x41A8C000 is float32 21.09375; the wire words for each order, as device manuals print them.
FLOAT32_21_09375 = {
    ByteOrder.ABCD: [0x41A8, 0xC000],
    ByteOrder.CDAB: [0xC000, 0x41A8],
    ByteOrder.BADC: [0xA841, 0x00C0],
    ByteOrder.DCBA: [0x00C0, 0xA841],
}


@pytest.mark.parametrize("order", list(ByteOrder))
def test_float32_decodes_in_every_byte_and_word_order(order: ByteOrder) -> None:
    assert decode_registers(FLOAT32_21_09375[order], DataType.float32, order) == 21.09375


@pytest.mark.parametrize(("order", "words"), [
    (ByteOrder.ABCD, [0x0001, 0xE240]),
    (ByteOrder.CDAB, [0xE240, 0x0001]),
    (ByteOrder.BADC, [0x0100, 0x40E2]),
    (ByteOrder.DCBA, [0x40E2, 0x0100]),
])
def test_uint32_123456_decodes_in_every_order(order: ByteOrder, words: list[int]) -> None:
    assert decode_registers(words, DataType.uint32, order) == 123456


@pytest.mark.parametrize(("order", "words"), [
    (ByteOrder.ABCD, [0xFFFE, 0x1DC0]),
    (ByteOrder.CDAB, [0x1DC0, 0xFFFE]),
    (ByteOrder.BADC, [0xFEFF, 0xC01D]),
    (ByteOrder.DCBA, [0xC01D, 0xFEFF]),
])
def test_int32_negative_decodes_in_every_order(order: ByteOrder, words: list[int]) -> None:
    assert decode_registers(words, DataType.int32, order) == -123456


# float64 -2.5 is 0xC004000000000000.
@pytest.mark.parametrize(("order", "words"), [
    (ByteOrder.ABCD, [0xC004, 0x0000, 0x0000, 0x0000]),
    (ByteOrder.CDAB, [0x0000, 0x0000, 0x0000, 0xC004]),
    (ByteOrder.BADC, [0x04C0, 0x0000, 0x0000, 0x0000]),
    (ByteOrder.DCBA, [0x0000, 0x0000, 0x0000, 0x04C0]),
])
def test_float64_decodes_in_every_order(order: ByteOrder, words: list[int]) -> None:
    assert decode_registers(words, DataType.float64, order) == -2.5


@pytest.mark.parametrize(("order", "expected"), [
    (ByteOrder.ABCD, -2), (ByteOrder.CDAB, -2), (ByteOrder.BADC, -257), (ByteOrder.DCBA, -257)])
def test_int16_byte_swap_applies_and_word_swap_does_not(order: ByteOrder, expected: int) -> None:
    assert decode_registers([0xFFFE], DataType.int16, order) == expected


def test_uint16_and_bool_registers() -> None:
    assert decode_registers([0xFFFE], DataType.uint16) == 65534
    assert decode_registers([0x0004], DataType.bool) is True
    assert decode_registers([0], DataType.bool) is False


def test_wrong_register_count_is_an_error() -> None:
    with pytest.raises(ValueError, match="float32 needs 2"):
        decode_registers([1], DataType.float32)


@given(value=st.floats(width=32, allow_nan=False), order=st.sampled_from(list(ByteOrder)))
def test_float32_round_trips_through_registers(value: float, order: ByteOrder) -> None:
    words = encode_value(value, DataType.float32, order)
    assert all(0 <= w <= 0xFFFF for w in words)
    assert decode_registers(words, DataType.float32, order) == value


@given(value=st.integers(-(2**31), 2**31 - 1), order=st.sampled_from(list(ByteOrder)))
def test_int32_round_trips_through_registers(value: int, order: ByteOrder) -> None:
    assert decode_registers(encode_value(value, DataType.int32, order), DataType.int32, order) == value


def test_nan_in_registers_decodes_as_nan_for_the_connector_to_reject() -> None:
    words = encode_value(math.nan, DataType.float32)
    assert math.isnan(decode_registers(words, DataType.float32))


def test_scale_and_offset_give_engineering_units() -> None:
    assert scale_value(8725, 0.25, -10) == 2171.25
    assert scale_value(42, 1, 0) == 42 and isinstance(scale_value(42, 1, 0), int)
    assert scale_value(True, 10, 1) is True


def test_read_plan_merges_neighbours_and_splits_tables_and_far_addresses() -> None:
    regs = [
        RegisterConfig(key="a", address=0, data_type=DataType.float32),
        RegisterConfig(key="b", address=2, data_type=DataType.int16),
        RegisterConfig(key="c", address=6, data_type=DataType.float64),
        RegisterConfig(key="far", address=500, data_type=DataType.uint16),
        RegisterConfig(key="in", table=RegisterTable.input, address=2, data_type=DataType.uint16),
        RegisterConfig(key="coil", table=RegisterTable.coil, address=7, data_type=DataType.bool),
    ]
    plan = [(b.table, b.address, b.count, [r.key for r in b.items]) for b in plan_reads(regs)]
    assert plan == [
        (RegisterTable.holding, 0, 10, ["a", "b", "c"]),
        (RegisterTable.holding, 500, 1, ["far"]),
        (RegisterTable.input, 2, 1, ["in"]),
        (RegisterTable.coil, 7, 1, ["coil"]),
    ]


def test_read_plan_never_exceeds_125_registers() -> None:
    regs = [RegisterConfig(key=f"k{i}", address=i * 4, data_type=DataType.float64) for i in range(100)]
    blocks = plan_reads(regs)
    assert all(b.count <= 125 for b in blocks)
    assert sorted(r.key for b in blocks for r in b.items) == sorted(r.key for r in regs)


def test_decode_block_applies_type_order_and_scale() -> None:
    regs = [
        RegisterConfig(key="t", address=0, data_type=DataType.float32, byte_order=ByteOrder.CDAB),
        RegisterConfig(key="p", address=2, data_type=DataType.int16, scale=0.5, offset=1),
    ]
    (block,) = plan_reads(regs)
    words = FLOAT32_21_09375[ByteOrder.CDAB] + encode_value(-40, DataType.int16)
    assert [(r.key, v) for r, v in decode_block(block, words)] == [("t", 21.09375), ("p", -19.0)]


def test_encode_matches_struct_for_big_endian() -> None:
    assert encode_value(21.09375, DataType.float32) == list(struct.unpack(">HH", struct.pack(">f", 21.09375)))


@pytest.mark.parametrize(("raw", "field"), [
    ({"host": "plc", "registers": []}, "config.registers"),
    ({"host": "plc", "registers": [{"key": "x", "address": 70000}]}, "config.registers.0.address"),
    ({"host": "plc", "registers": [{"key": "x", "table": "coil", "address": 1, "data_type": "float32"}]},
     "config.registers.0"),
    ({"host": "plc", "registers": [{"key": "x", "address": 1}, {"key": "x", "address": 2}]}, "config.registers"),
    ({"host": "plc", "registers": [{"key": "bad key", "address": 1}]}, "config.registers.0.key"),
    ({"host": "plc", "registers": [{"key": "x", "address": 1, "byte_order": "ADCB"}]},
     "config.registers.0.byte_order"),
    ({"host": "plc", "port": 0, "registers": [{"key": "x", "address": 1}]}, "config.port"),
])
def test_invalid_register_maps_name_the_field(raw: dict, field: str) -> None:
    from ecoplat.connect.gateways.modbus import ModbusConnector

    with pytest.raises(Unprocessable) as e:
        ModbusConnector.validate_config(raw)
    assert e.value.errors and e.value.errors[0]["field"] == field


def test_valid_config_defaults() -> None:
    c = ModbusConfig.model_validate({"host": "10.0.0.5", "registers": [{"key": "level_pct", "address": 3}]})
    assert (c.port, c.unit_id, c.registers[0].data_type, c.registers[0].byte_order) == (
        502, 1, DataType.uint16, ByteOrder.ABCD)


def test_bool_from_one_bit_of_a_status_word() -> None:
    regs = [RegisterConfig(key=f"b{bit}", address=4, data_type=DataType.bool, bit=bit) for bit in (0, 1, 15)]
    regs.append(RegisterConfig(key="word_nonzero", address=4, data_type=DataType.bool))
    (block,) = plan_reads(regs)
    got = {r.key: v for r, v in decode_block(block, [0b1000_0000_0000_0001])}
    assert got == {"b0": True, "b1": False, "b15": True, "word_nonzero": True}


def test_bit_is_only_for_bools_in_registers() -> None:
    from ecoplat.connect.gateways.modbus import ModbusConnector

    for reg in ({"key": "x", "address": 1, "data_type": "int16", "bit": 3},
                {"key": "x", "table": "coil", "address": 1, "data_type": "bool", "bit": 3},
                {"key": "x", "address": 1, "data_type": "bool", "bit": 16}):
        with pytest.raises(Unprocessable):
            ModbusConnector.validate_config({"host": "plc", "registers": [reg]})
