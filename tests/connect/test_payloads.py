"""The ThingsBoard payload parser on recorded payloads: every accepted shape and every bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecoplat.connect.payloads import (
    PayloadError,
    RejectReason,
    parse_attributes,
    parse_gateway_attributes,
    parse_gateway_connect,
    parse_gateway_telemetry,
    parse_telemetry,
)
from ecoplat.telemetry.points import Point

FIXTURES = Path(__file__).parent / "fixtures"
NOW = 1_764_201_700_000  # 2026-11-27, after every ts in the fixtures


def load(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_flat_telemetry_takes_the_server_time_and_keeps_every_type():
    points, rejects = parse_telemetry(load("tb_telemetry_flat.json"), device_id=7, now_ms=NOW)
    assert rejects == []
    assert points == [Point(7, "temperature", NOW, 42.5), Point(7, "active", NOW, True),
                      Point(7, "mode", NOW, "auto"), Point(7, "count", NOW, 7)]
    assert type(points[3].value) is int and type(points[1].value) is bool


def test_ts_values_object_uses_the_device_timestamp():
    points, rejects = parse_telemetry(load("tb_telemetry_ts_values.json"), device_id=1, now_ms=NOW)
    assert rejects == []
    assert points == [Point(1, "current_ka", 1764201600000, 14.2), Point(1, "cell_voltage_v", 1764201600000, 3.05)]


def test_array_of_mixed_entries():
    points, _ = parse_telemetry(load("tb_telemetry_array.json"), device_id=1, now_ms=NOW)
    assert [(p.ts, p.key, p.value) for p in points] == [
        (1764201600000, "current_ka", 14.2), (1764201601000, "current_ka", 14.3), (NOW, "brine_ph", 2.1)]


def test_gateway_statistics_as_thingsboard_gateway_sends_them():
    points, rejects = parse_telemetry(load("tb_gateway_statistics.json"), device_id=3, now_ms=NOW)
    assert rejects == [] and len(points) == 5 and {p.ts for p in points} == {1764201600000}


def test_gateway_telemetry_by_device_name():
    rows, rejects = parse_gateway_telemetry(load("tb_gateway_telemetry.json"), now_ms=NOW)
    assert rejects == []
    assert rows == {
        "Electrolyzer A": [(1764201600000, {"current_ka": 14.2, "cell_voltage_v": 3.05}),
                           (1764201601000, {"current_ka": 14.4})],
        "Cl2 Detector 3": [(1764201600000, {"cl2_ppm": 0.4})],
    }


def test_gateway_attributes_keep_nested_json():
    attrs, rejects = parse_gateway_attributes(load("tb_gateway_attributes.json"))
    assert rejects == []
    assert attrs["Electrolyzer A"]["membrane"] == {"vendor": "Asahi", "installed": "2025-03-01"}
    assert attrs["Cl2 Detector 3"] == {"range_ppm": 10}


def test_gateway_connect_and_disconnect():
    assert parse_gateway_connect(load("tb_gateway_connect.json")) == ("Electrolyzer A", "membrane_electrolyzer")
    assert parse_gateway_connect(load("tb_gateway_disconnect.json")) == ("Electrolyzer A", "default")


def test_device_attributes():
    attrs, rejects = parse_attributes(load("tb_attributes.json"))
    assert rejects == []
    assert attrs == {"firmware": "1.4.2", "serial": "CD-3-0042", "calibrated": True, "config": {"alarm_ppm": [1, 3]}}


@pytest.mark.parametrize(("fixture", "reason"), [
    ("bad_malformed.txt", RejectReason.malformed_json),
    ("bad_invalid_utf8.bin", RejectReason.malformed_json),
    ("bad_infinity_only.json", RejectReason.non_finite),
    ("bad_list_value.json", RejectReason.wrong_type),
    ("bad_negative_ts.json", RejectReason.bad_ts),
    ("bad_float_ts.json", RejectReason.bad_ts),
    ("bad_string_ts.json", RejectReason.bad_ts),
    ("bad_future_ts.json", RejectReason.bad_ts),
    ("bad_string_top.json", RejectReason.not_an_object),
    ("bad_number_top.json", RejectReason.not_an_object),
    ("bad_empty_object.json", RejectReason.empty),
    ("bad_empty_array.json", RejectReason.empty),
    ("bad_empty.txt", RejectReason.empty),
    ("bad_values_not_object.json", RejectReason.not_an_object),
])
def test_unusable_telemetry_is_rejected_with_its_reason(fixture: str, reason: RejectReason):
    with pytest.raises(PayloadError) as info:
        parse_telemetry(load(fixture), device_id=1, now_ms=NOW)
    assert info.value.reason == reason
    assert info.value.detail


@pytest.mark.parametrize(("fixture", "kept", "reason"), [
    ("bad_nan_token.json", "pressure_kpa", RejectReason.non_finite),
    ("bad_huge_number.json", "level_pct", RejectReason.non_finite),
    ("bad_nested_value.json", "level_pct", RejectReason.wrong_type),
    ("bad_null_value.json", "level_pct", RejectReason.wrong_type),
])
def test_one_bad_value_is_rejected_and_the_others_kept(fixture: str, kept: str, reason: RejectReason):
    points, rejects = parse_telemetry(load(fixture), device_id=1, now_ms=NOW)
    assert [p.key for p in points] == [kept]
    assert [r.reason for r in rejects] == [reason]
    assert "temperature" in rejects[0].detail


def test_payload_over_the_limit_is_rejected_before_parsing():
    raw = b'{"k": "' + b"x" * 2000 + b'"}'
    with pytest.raises(PayloadError) as info:
        parse_telemetry(raw, device_id=1, now_ms=NOW, max_bytes=1024)
    assert info.value.reason == RejectReason.payload_too_large


def test_gateway_telemetry_for_one_device_not_an_array_is_rejected_alone():
    raw = (b'{"Electrolyzer A": {"ts": 1, "values": {"a": 1}}, '
           b'"Cl2 Detector 3": [{"ts": 1764201600000, "values": {"cl2_ppm": 0.4}}]}')
    rows, rejects = parse_gateway_telemetry(raw, now_ms=NOW)
    assert list(rows) == ["Cl2 Detector 3"]
    assert [r.reason for r in rejects] == [RejectReason.wrong_type]
    with pytest.raises(PayloadError) as info:
        parse_gateway_telemetry(load("bad_gateway_not_array.json"), now_ms=NOW)
    assert info.value.reason == RejectReason.wrong_type


@pytest.mark.parametrize("raw", [b"[]", b'"x"', b'{"type": "t"}', b'{"device": ""}', b'{"device": 5}'])
def test_gateway_connect_needs_a_device_name(raw: bytes):
    with pytest.raises(PayloadError):
        parse_gateway_connect(raw)


def test_attributes_reject_non_finite_inside_nested_values_and_non_objects():
    attrs, rejects = parse_attributes(b'{"a": {"b": [1, NaN]}, "c": 2}')
    assert attrs == {"c": 2} and [r.reason for r in rejects] == [RejectReason.non_finite]
    with pytest.raises(PayloadError) as info:
        parse_attributes(b"[1, 2]")
    assert info.value.reason == RejectReason.not_an_object


def test_values_a_double_cannot_hold_are_dropped_alone_and_huge_finite_values_are_kept() -> None:
    # 10**400 is valid JSON but no double holds it: stored as a number it would fail the whole
    # batch, other devices' points included.
    raw = b'{"ts": %d, "values": {"big": %s, "a": 1e308, "b": 1e308, "c": 2}}' % (NOW, b"1" + b"0" * 400)
    points, rejects = parse_telemetry(raw, device_id=1, now_ms=NOW)
    assert {p.key: p.value for p in points} == {"a": 1e308, "b": 1e308, "c": 2}
    assert [r.reason for r in rejects] == [RejectReason.wrong_type] and "big" in rejects[0].detail


def test_gateway_frames_keep_each_entry_whole_and_drop_only_bad_values() -> None:
    raw = (b'{"A": [{"ts": %d, "values": {"x": 1.5, "on": true, "s": "run", "bad": NaN}},'
           b' {"ts": %d, "values": {"x": 2.5}}]}' % (NOW - 1000, NOW))
    rows, rejects = parse_gateway_telemetry(raw, now_ms=NOW)
    assert rows == {"A": [(NOW - 1000, {"x": 1.5, "on": True, "s": "run"}), (NOW, {"x": 2.5})]}
    assert [r.reason for r in rejects] == [RejectReason.non_finite]
