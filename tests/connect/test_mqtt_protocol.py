"""The pure parts of the MQTT transports: the ThingsBoard topic space, MQTT topic filters, the
session limits answered to gateways, and the MQTT 5 ↔ 3.1.1 packet translation (byte layouts from
the MQTT 5.0 and 3.1.1 specifications)."""

from __future__ import annotations

import pytest

from ecoplat.config import Settings
from ecoplat.connect.broker import topic_matches
from ecoplat.connect.mqtt import classify, session_limits
from ecoplat.connect.mqtt5 import (
    Mqtt5State,
    connect_v5_to_v311,
    decode_varint,
    encode_varint,
    v5_to_v311,
    v311_to_v5,
)


@pytest.mark.parametrize(("topic", "expected"), [
    ("v1/devices/me/telemetry", ("telemetry", "")),
    ("v1/devices/me/attributes", ("attributes", "")),
    ("v1/devices/me/attributes/request/17", ("attributes_request", "17")),
    ("v1/devices/me/rpc/response/5", ("rpc_response", "5")),
    ("v1/devices/me/rpc/request/9", ("rpc_request", "9")),
    ("v1/gateway/telemetry", ("gateway_telemetry", "")),
    ("v1/gateway/connect", ("gateway_connect", "")),
    ("v1/gateway/rpc", ("gateway_rpc", "")),
    ("v1/gateway/attributes/request", ("gateway_attributes_request", "")),
    ("v1/devices/me/rpc/request/", ("", "")),
    ("v1/devices/me/rpc/request/1/2", ("", "")),
    ("v1/devices/other/telemetry", ("", "")),
    ("plant/area/telemetry", ("", "")),
])
def test_thingsboard_topics_are_classified_and_everything_else_is_outside_the_api(
        topic: str, expected: tuple[str, str]) -> None:
    assert classify(topic) == expected


@pytest.mark.parametrize(("topic_filter", "topic", "matches"), [
    ("v1/devices/me/rpc/request/+", "v1/devices/me/rpc/request/3", True),
    ("v1/devices/me/rpc/request/+", "v1/devices/me/rpc/request/3/x", False),
    ("v1/devices/me/#", "v1/devices/me/attributes", True),
    ("v1/devices/me/attributes", "v1/devices/me/attributes/response/1", False),
    ("#", "anything/at/all", True),
])
def test_topic_filters_match_as_mqtt_defines(topic_filter: str, topic: str, matches: bool) -> None:
    assert topic_matches(topic_filter, topic) is matches


def test_session_limits_are_the_tenants_own_where_set_and_the_platforms_otherwise() -> None:
    settings = Settings(max_payload_bytes=65_536)
    tenant = session_limits(settings, {"maxPayloadSize": 8192, "rateLimits": {"messages": "10:1"}})
    assert tenant["maxPayloadSize"] == 8192
    assert tenant["rateLimits"]["messages"] == "10:1"
    assert set(tenant["rateLimits"]) == {"messages", "telemetryMessages", "telemetryDataPoints"}
    default = session_limits(settings, None)
    assert default["maxPayloadSize"] == 65_536 and default["maxInflightMessages"] == 100


def _s(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_varint(len(body)) + body


def _split(packet: bytes) -> tuple[int, bytes]:
    length, start = decode_varint(packet, 1)
    assert len(packet) == start + length
    return packet[0], packet[start:]


@pytest.mark.parametrize("value", [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 268_435_455])
def test_variable_byte_integers_round_trip(value: int) -> None:
    assert decode_varint(encode_varint(value), 0) == (value, len(encode_varint(value)))


def test_v5_connect_with_properties_and_will_becomes_a_311_connect() -> None:
    props = b"\x11\x00\x00\x0e\x10" + b"\x21\x00\x64"  # session expiry 3600, receive maximum 100
    will_props = b"\x18\x00\x00\x00\x05"  # will delay interval
    flags = 0x80 | 0x04 | 0x02  # username, will, clean start
    body = (_s("MQTT") + b"\x05" + bytes((flags,)) + b"\x00\x3c" + encode_varint(len(props)) + props
            + _s("dev-1") + encode_varint(len(will_props)) + will_props + _s("v1/devices/me/telemetry")
            + _s("gone") + _s("TOKEN123"))
    first, out = _split(connect_v5_to_v311(0x10, body))
    assert first == 0x10
    assert out == (_s("MQTT") + b"\x04" + bytes((flags,)) + b"\x00\x3c" + _s("dev-1")
                   + _s("v1/devices/me/telemetry") + _s("gone") + _s("TOKEN123"))


def test_v5_publish_loses_its_properties_and_topic_aliases_are_resolved() -> None:
    state = Mqtt5State()
    alias_props = b"\x23\x00\x07"  # topic alias 7
    first = 0x32  # PUBLISH, QoS 1
    with_topic = _s("v1/devices/me/telemetry") + b"\x00\x2a" + encode_varint(len(alias_props)) + alias_props + b'{"a":1}'
    _f, out = _split(v5_to_v311(first, with_topic, state))
    assert out == _s("v1/devices/me/telemetry") + b"\x00\x2a" + b'{"a":1}'
    alias_only = _s("") + b"\x00\x2b" + encode_varint(len(alias_props)) + alias_props + b'{"a":2}'
    _f, out = _split(v5_to_v311(first, alias_only, state))
    assert out == _s("v1/devices/me/telemetry") + b"\x00\x2b" + b'{"a":2}'


def test_v5_subscribe_keeps_only_the_qos_and_unsuback_gets_one_reason_per_topic() -> None:
    state = Mqtt5State()
    body = b"\x00\x05" + b"\x00" + _s("v1/devices/me/rpc/request/+") + b"\x2d"  # QoS 1 + NL/RAP/RH bits
    _f, out = _split(v5_to_v311(0x82, body, state))
    assert out == b"\x00\x05" + _s("v1/devices/me/rpc/request/+") + b"\x01"
    unsub = b"\x00\x06" + b"\x00" + _s("a/b") + _s("c/d")
    _f, out = _split(v5_to_v311(0xA2, unsub, state))
    assert out == b"\x00\x06" + _s("a/b") + _s("c/d")
    _f, out = _split(v311_to_v5(_packet(0xB0, b"\x00\x06"), state))
    assert out == b"\x00\x06" + b"\x00" + b"\x00\x00"


def test_311_answers_become_v5_answers() -> None:
    state = Mqtt5State()
    assert _split(v311_to_v5(_packet(0x20, b"\x00\x05"), state)) == (0x20, b"\x00\x87\x00")  # not authorized
    assert _split(v311_to_v5(_packet(0x20, b"\x01\x00"), state)) == (0x20, b"\x01\x00\x00")
    publish = _packet(0x32, _s("v1/devices/me/rpc/request/1") + b"\x00\x09" + b'{"m":1}')
    assert _split(v311_to_v5(publish, state))[1] == _s("v1/devices/me/rpc/request/1") + b"\x00\x09\x00" + b'{"m":1}'
    assert _split(v311_to_v5(_packet(0x90, b"\x00\x05\x01\x80"), state))[1] == b"\x00\x05\x00\x01\x80"
    assert v311_to_v5(_packet(0x40, b"\x00\x09"), state) == _packet(0x40, b"\x00\x09")  # PUBACK as is
