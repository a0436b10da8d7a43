"""The embedded MQTT broker end to end: the real app runtime (store, ingest pipeline, amqtt) in
this process, real ThingsBoard SDK clients and paho against it, values read back over REST."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import select
from tb_device_mqtt import TBDeviceMqttClient
from tb_gateway_mqtt import TBGatewayMqttClient

from ecoplat.connect.models import Device, DeviceReject
from ecoplat.db import Database
from ecoplat.migrations_runner import upgrade

sys.path.insert(0, str(Path(__file__).parent))
from mqtt_support import (  # noqa: E402
    Tenant,
    drop_postgres_database,
    errors_by_reason,
    free_port,
    latest,
    new_database_url,
    paho_client,
    platform_settings,
    running_platform,
    seed_tenant,
    set_revoked,
    wait_until,
)

LIMITS = {"maxPayloadSize": 32768, "maxInflightMessages": 50,
          "rateLimits": {"messages": "500:1,20000:60", "telemetryMessages": "400:1,15000:60",
                         "telemetryDataPoints": "4000:1,150000:60"}}


@dataclass
class Platform:
    http: Any
    tenant: Tenant
    port: int
    database_url: str
    max_payload_bytes: int


@pytest.fixture(scope="module")
def platform(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    tmp = tmp_path_factory.mktemp("mqtt-embedded")
    url = new_database_url(backend, tmp)
    upgrade(url)
    tenant = seed_tenant(url, devices=("cell-1", "cell-2", "detector-1", "bad-1", "revoked-1", "ack-1", "rpc-a",
                                       "rpc-b", "pipe-1", "bad-topic-1", "quiet-1", "pinger-1"),
                         gateways=("gw-1", "gw-order"), limits=LIMITS)
    set_revoked(url, tenant.device("revoked-1")[0])
    port = free_port()
    settings = platform_settings(url, tmp / "var", mqtt_port=port, max_payload_bytes=4096)
    with running_platform(settings) as http:
        yield Platform(http, tenant, port, url, settings.max_payload_bytes)
    if backend == "postgres":
        drop_postgres_database(url)


def _connected_paho(platform: Platform, token: str, **kw: Any) -> mqtt.Client:
    c = paho_client(platform.port, token, **kw)
    connected = threading.Event()
    c.on_connect = lambda *a: connected.set()
    c.connect("127.0.0.1", platform.port, keepalive=30)
    c.loop_start()
    assert connected.wait(10), "no CONNACK"
    return c


def _publish_acked(c: mqtt.Client, topic: str, payload: bytes) -> None:
    info = c.publish(topic, payload, qos=1)
    info.wait_for_publish(10)
    assert info.is_published(), f"no PUBACK for {topic}"


def _stop(c: mqtt.Client) -> None:
    c.disconnect()
    c.loop_stop()


def test_thingsboard_sdk_device_telemetry_attributes_and_rpc_read_back_exact(platform: Platform) -> None:
    device_id, token = platform.tenant.device("cell-1")
    client = TBDeviceMqttClient("127.0.0.1", port=platform.port, username=token)

    def on_rpc(request_id: str, body: dict[str, Any]) -> None:
        client.send_rpc_reply(request_id, {"accepted": True, "method": body["method"], "echo": body["params"]})

    client.set_server_side_rpc_request_handler(on_rpc)
    client.connect()
    try:
        wait_until(client.is_connected, message="TB SDK connected")
        # The SDK asks getSessionLimits on connect; it must get the tenant's real limits.
        wait_until(lambda: client.rate_limits_received, message="session limits answered")
        assert client.max_payload_size == int(LIMITS["maxPayloadSize"] * 0.8)

        ts = int(time.time() * 1000) - 5_000
        values = {"current_ka": 12.5, "voltage_v": 3.217, "running": True, "mode": "auto", "cycles": 41}
        assert client.send_telemetry({"ts": ts, "values": values}).get() == 0
        assert client.send_telemetry({"cell_temp_c": 86.25}).get() == 0
        assert client.send_attributes({"firmware": "2.1.0", "serial": "E-101", "channels": [1, 2]}).get() == 0

        got = latest(platform.http, platform.tenant, device_id)
        for key, value in values.items():
            assert got[key]["value"] == value
            if isinstance(value, bool | str):  # numbers are numbers; booleans stay booleans
                assert type(got[key]["value"]) is type(value)
            assert got[key]["ts"] == ts
        assert got["cell_temp_c"]["value"] == 86.25

        attrs = wait_until(lambda: _client_attributes(platform, device_id).get("serial") and
                           _client_attributes(platform, device_id), message="client attributes stored")
        assert attrs["firmware"] == "2.1.0" and attrs["serial"] == "E-101" and attrs["channels"] == [1, 2]

        # Shared attributes set over REST are pushed to the device; the device can ask for its
        # client and shared attributes and gets ThingsBoard's answer shape.
        pushed: list[dict[str, Any]] = []
        client.subscribe_to_all_attributes(lambda content, _exc: pushed.append(content))
        r = platform.http.post(f"/api/devices/{device_id}/attributes", params={"scope": "shared"},
                               headers=platform.tenant.headers, json={"current_limit_ka": 13.5})
        assert r.status_code == 200, r.text
        assert wait_until(lambda: pushed, message="shared attribute pushed") == [{"current_limit_ka": 13.5}]
        answers: list[dict[str, Any]] = []
        client.request_attributes(client_keys=["serial"], shared_keys=["current_limit_ka"],
                                  callback=lambda content, _exc: answers.append(content))
        assert wait_until(lambda: answers, message="attribute response") == [
            {"client": {"serial": "E-101"}, "shared": {"current_limit_ka": 13.5}}]

        # Server-side RPC through the REST API, answered by the SDK's handler.
        r = platform.http.post(f"/api/devices/{device_id}/rpc", headers=platform.tenant.headers,
                               json={"method": "setCurrentLimit", "params": {"limit_ka": 14}, "timeout_ms": 5000})
        assert r.status_code == 200, r.text
        answer = r.json()
        answer = answer.get("response", answer)
        assert answer == {"accepted": True, "method": "setCurrentLimit", "echo": {"limit_ka": 14}}
    finally:
        client.stop()
        client.disconnect()


def _client_attributes(platform: Platform, device_id: int) -> dict[str, Any]:
    r = platform.http.get(f"/api/devices/{device_id}/attributes", params={"scope": "client"},
                          headers=platform.tenant.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    if isinstance(body, dict) and "client" in body:
        body = body["client"]
    if isinstance(body, dict) and "items" in body:
        body = body["items"]
    if isinstance(body, list):
        return {a["key"]: a["value"] for a in body if a.get("scope", "client") == "client"}
    return body


def test_gateway_session_limits_then_children_created_and_their_telemetry_stored(platform: Platform) -> None:
    gw_id, gw_token = platform.tenant.device("gw-1")
    gateway = TBGatewayMqttClient("127.0.0.1", port=platform.port, username=gw_token)

    def on_rpc(gw: Any, request: dict[str, Any]) -> None:
        gw.gw_send_rpc_reply(request["device"], request["data"]["id"], {"done": request["data"]["method"]})

    gateway.gw_set_server_side_rpc_request_handler(on_rpc)
    gateway.connect()
    try:
        wait_until(gateway.is_connected, message="gateway connected")
        wait_until(lambda: gateway.rate_limits_received, message="getSessionLimits answered")
        assert gateway.max_payload_size == int(LIMITS["maxPayloadSize"] * 0.8)

        assert gateway.gw_connect_device("Boiler 7", "boiler").get() == 0
        ts = int(time.time() * 1000) - 60_000
        assert gateway.gw_send_telemetry("Boiler 7", [{"ts": ts, "values": {"steam_kpa": 812.5}},
                                                      {"ts": ts + 1000, "values": {"steam_kpa": 815.0}}]).get() == 0
        assert gateway.gw_send_telemetry("Pump 3", {"ts": ts, "values": {"flow_m3h": 42.0, "on": True}}).get() == 0
        assert gateway.gw_send_attributes("Pump 3", {"model": "KSB Etanorm"}).get() == 0

        children = _children(platform.database_url, gw_id)
        assert set(children) == {"Boiler 7", "Pump 3"}
        boiler = latest(platform.http, platform.tenant, children["Boiler 7"][0])
        assert boiler["steam_kpa"] == {"ts": ts + 1000, "value": 815.0}
        pump = latest(platform.http, platform.tenant, children["Pump 3"][0])
        assert pump["flow_m3h"]["value"] == 42.0 and pump["on"]["value"] is True
        assert children["Boiler 7"][1] == platform.tenant.enterprise_id
        assert children["Boiler 7"][2] == "boiler"

        # Server-side RPC to a child goes through its gateway on v1/gateway/rpc.
        r = platform.http.post(f"/api/devices/{children['Pump 3'][0]}/rpc", headers=platform.tenant.headers,
                               json={"method": "stop", "params": {}, "timeout_ms": 5000})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer.get("response", answer) == {"done": "stop"}
    finally:
        gateway.stop()
        gateway.disconnect()


def _children(database_url: str, gateway_id: int) -> dict[str, tuple[int, int | None, str]]:
    database = Database(database_url)
    try:
        with database.session() as s:
            rows = s.execute(select(Device.id, Device.name, Device.enterprise_id, Device.type)
                             .where(Device.gateway_id == gateway_id)).all()
            return {r.name: (r.id, r.enterprise_id, r.type) for r in rows}
    finally:
        database.dispose()


def test_every_bad_input_is_rejected_counted_by_reason_and_ingest_keeps_going(platform: Platform) -> None:
    device_id, token = platform.tenant.device("bad-1")
    c = _connected_paho(platform, token)
    try:
        bad = [
            ("v1/devices/me/telemetry", b'{"current_ka": 12.'),  # malformed_json
            ("v1/devices/me/telemetry", b'{"current_ka": {"nested": 1}}'),  # wrong_type
            ("v1/devices/me/telemetry", b'"just a string"'),  # not_an_object
            ("v1/devices/me/telemetry", b'{"current_ka": NaN}'),  # non_finite
            ("v1/devices/me/telemetry", b'{"current_ka": Infinity}'),  # non_finite
            ("v1/devices/me/telemetry", b'{"ts": -5, "values": {"current_ka": 1}}'),  # bad_ts
            ("v1/devices/me/telemetry", b'{"k": "' + b"x" * platform.max_payload_bytes + b'"}'),  # payload_too_large
            ("plant/area-1/secret", b'{"current_ka": 1}'),  # topic_not_allowed
            ("v1/devices/me/attributes", b"[1, 2]"),  # not_an_object
        ]
        for topic, payload in bad:
            _publish_acked(c, topic, payload)
        # The connection survived all of that: a good message afterwards is stored.
        ts = int(time.time() * 1000)
        _publish_acked(c, "v1/devices/me/telemetry", orjson.dumps({"ts": ts, "values": {"current_ka": 9.75}}))
        assert latest(platform.http, platform.tenant, device_id)["current_ka"] == {"ts": ts, "value": 9.75}
    finally:
        _stop(c)

    # Unknown and revoked tokens are refused at CONNECT.
    for tok in ("no-such-token", platform.tenant.device("revoked-1")[1]):
        refused = paho_client(platform.port, tok)
        codes: list[Any] = []
        refused.on_connect = lambda _c, _u, _f, rc, _p=None, codes=codes: codes.append(rc)
        refused.connect("127.0.0.1", platform.port)
        refused.loop_start()
        wait_until(lambda codes=codes: codes, message="CONNACK")
        refused.loop_stop()
        assert codes[0].is_failure and codes[0].getName() == "Not authorized"

    expected = {"malformed_json": 1, "wrong_type": 1, "not_an_object": 2, "non_finite": 2, "bad_ts": 1,
                "payload_too_large": 1, "topic_not_allowed": 1}
    counts = wait_until(lambda: (lambda got: got if all(got.get(k, 0) >= v for k, v in expected.items()) else None)(
        errors_by_reason(platform.http, platform.tenant, device_id)), timeout=10, message="reject counters")
    assert {k: counts.get(k) for k in expected} == expected
    revoked_id = platform.tenant.device("revoked-1")[0]
    assert wait_until(lambda: errors_by_reason(platform.http, platform.tenant, revoked_id).get("revoked_token"),
                      message="revoked token counted") == 1
    assert wait_until(lambda: _unknown_token_rejects(platform.database_url), message="unknown token counted") >= 1


def _unknown_token_rejects(database_url: str) -> int:
    database = Database(database_url)
    try:
        with database.session() as s:
            return s.scalar(select(DeviceReject.count).where(DeviceReject.device_id.is_(None),
                                                             DeviceReject.reason == "unknown_token")) or 0
    finally:
        database.dispose()


def test_qos1_puback_arrives_only_after_the_point_is_durable(platform: Platform) -> None:
    device_id, token = platform.tenant.device("ack-1")
    c = _connected_paho(platform, token)
    try:
        base = int(time.time() * 1000) - 10_000
        for i in range(15):
            _publish_acked(c, "v1/devices/me/telemetry",
                           orjson.dumps({"ts": base + i, "values": {"level_pct": 50.0 + i}}))
            # No waiting, no retry: once PUBACK is in, the point must already be readable.
            assert latest(platform.http, platform.tenant, device_id)["level_pct"] == {"ts": base + i,
                                                                                   "value": 50.0 + i}
    finally:
        _stop(c)


def _packet(kind: int, body: bytes) -> bytes:
    assert len(body) < 128
    return bytes([kind, len(body)]) + body


def _utf8(text: str) -> bytes:
    return len(text).to_bytes(2, "big") + text.encode()


def test_pipelined_qos1_publishes_are_all_acknowledged_in_order(platform: Platform) -> None:
    # A device that does not wait for each PUBACK (paho with many in flight does this): the
    # broker acknowledges a batch's publishes together, and must keep MQTT's order (4.6).
    import socket

    device_id, token = platform.tenant.device("pipe-1")
    base = int(time.time() * 1000) - 20_000
    with socket.create_connection(("127.0.0.1", platform.port), timeout=10) as sock:
        connect = _utf8("MQTT") + bytes([4, 0x82]) + (30).to_bytes(2, "big") + _utf8("pipe-1") + _utf8(token)
        sock.sendall(_packet(0x10, connect))
        assert sock.recv(4) == b"\x20\x02\x00\x00"  # CONNACK, accepted
        topic = _utf8("v1/devices/me/telemetry")
        sock.sendall(b"".join(
            _packet(0x32, topic + pid.to_bytes(2, "big") + orjson.dumps({"ts": base + pid, "values": {"n": pid}}))
            for pid in range(1, 41)))
        data = b""
        while len(data) < 40 * 4:
            chunk = sock.recv(4096)
            assert chunk, "connection closed before every PUBACK arrived"
            data += chunk
    acks = [data[i:i + 4] for i in range(0, len(data), 4)]
    assert [a[:2] for a in acks] == [b"\x40\x02"] * 40
    assert [int.from_bytes(a[2:], "big") for a in acks] == list(range(1, 41))
    stored = latest(platform.http, platform.tenant, device_id)["n"]
    assert stored == {"ts": base + 40, "value": 40}


def test_a_gateway_publish_that_must_wait_is_not_overtaken_by_the_ones_behind_it(platform: Platform) -> None:
    # Telemetry of known children is queued as it is read; a message for a child seen for the
    # first time waits for the child to be created. The messages behind it on the connection
    # must wait their turn: PUBACKs in order (MQTT 4.6), and the child's points in order.
    import socket

    gw_id, token = platform.tenant.device("gw-order")
    base = int(time.time() * 1000) - 30_000
    topic = _utf8("v1/gateway/telemetry")

    def publish(pid: int, child: str) -> bytes:
        return _packet(0x32, topic + pid.to_bytes(2, "big")
                       + orjson.dumps({child: [{"ts": base + pid, "values": {"n": pid}}]}))

    def read_acks(sock: socket.socket, n: int) -> list[int]:
        data = b""
        while len(data) < n * 4:
            chunk = sock.recv(4096)
            assert chunk, "connection closed before every PUBACK arrived"
            data += chunk
        acks = [data[i:i + 4] for i in range(0, len(data), 4)]
        assert [a[:2] for a in acks] == [b"\x40\x02"] * n
        return [int.from_bytes(a[2:], "big") for a in acks]

    with socket.create_connection(("127.0.0.1", platform.port), timeout=10) as sock:
        connect = _utf8("MQTT") + bytes([4, 0x82]) + (30).to_bytes(2, "big") + _utf8("gw-order") + _utf8(token)
        sock.sendall(_packet(0x10, connect))
        assert sock.recv(4) == b"\x20\x02\x00\x00"
        sock.sendall(publish(1, "known"))
        assert read_acks(sock, 1) == [1]  # "known" exists now
        sock.sendall(publish(2, "fresh") + b"".join(publish(pid, "known") for pid in range(3, 41)))
        assert read_acks(sock, 39) == list(range(2, 41))
        # An attributes message is handled apart from the telemetry batch, and may be done
        # first: its PUBACK still waits for the telemetry's that came before it.
        attributes = _packet(0x32, _utf8("v1/gateway/attributes") + (42).to_bytes(2, "big")
                             + orjson.dumps({"known": {"model": "KSB"}}))
        sock.sendall(publish(41, "known") + attributes + publish(43, "known"))
        assert read_acks(sock, 3) == [41, 42, 43]
    children = _children(platform.database_url, gw_id)
    assert latest(platform.http, platform.tenant, children["fresh"][0])["n"] == {"ts": base + 2, "value": 2}
    assert latest(platform.http, platform.tenant, children["known"][0])["n"] == {"ts": base + 43, "value": 43}


def test_a_client_silent_past_one_and_a_half_keep_alives_is_disconnected(platform: Platform) -> None:
    # MQTT 3.1.1 section 3.1.2.10: keep-alive 1 s, so nothing for 1.5 s ends the connection;
    # a client that pings every 0.4 s stays connected meanwhile.
    import socket

    def connect(name: str) -> socket.socket:
        _, token = platform.tenant.device(name)
        sock = socket.create_connection(("127.0.0.1", platform.port), timeout=10)
        sock.sendall(_packet(0x10, _utf8("MQTT") + bytes([4, 0x82]) + (1).to_bytes(2, "big") + _utf8(name)
                             + _utf8(token)))
        assert sock.recv(4) == b"\x20\x02\x00\x00"
        return sock

    with connect("quiet-1") as quiet, connect("pinger-1") as pinger:
        started = time.monotonic()
        pinger.settimeout(0.4)
        while time.monotonic() - started < 3.0:
            pinger.sendall(b"\xc0\x00")  # PINGREQ
            assert pinger.recv(2) == b"\xd0\x00"  # PINGRESP: still connected
            time.sleep(0.3)
        quiet.settimeout(0.5)
        assert quiet.recv(16) == b"", "the silent client is still connected after 3 s"


def test_a_malformed_publish_closes_the_connection_and_what_came_before_stays_stored(platform: Platform) -> None:
    # MQTT 3.1.1 section 4.8: a packet that breaks the protocol ends the connection. What was
    # acknowledged before it stays stored, and the device may connect again.
    import socket

    device_id, token = platform.tenant.device("bad-topic-1")
    ts = int(time.time() * 1000) - 5_000

    def connect(sock: socket.socket) -> None:
        body = _utf8("MQTT") + bytes([4, 0x82]) + (30).to_bytes(2, "big") + _utf8("bad-topic-1") + _utf8(token)
        sock.sendall(_packet(0x10, body))
        assert sock.recv(4) == b"\x20\x02\x00\x00"

    with socket.create_connection(("127.0.0.1", platform.port), timeout=10) as sock:
        connect(sock)
        good = _utf8("v1/devices/me/telemetry") + (7).to_bytes(2, "big") + orjson.dumps(
            {"ts": ts, "values": {"n": 1}})
        sock.sendall(_packet(0x32, good))
        assert sock.recv(4) == b"\x40\x02\x00\x07"  # PUBACK: stored
        bad_topic = (4).to_bytes(2, "big") + b"v1\xff\xfe"  # not UTF-8
        sock.sendall(_packet(0x32, bad_topic + (8).to_bytes(2, "big") + b"{}"))
        assert sock.recv(4096) == b""  # closed, with no PUBACK for it
    assert latest(platform.http, platform.tenant, device_id)["n"] == {"ts": ts, "value": 1}
    with socket.create_connection(("127.0.0.1", platform.port), timeout=10) as sock:
        connect(sock)  # a new connection is served as usual


def test_device_only_subscribes_to_api_topics_and_rpc_reaches_only_its_device(platform: Platform) -> None:
    (a_id, a_token), (_b_id, b_token) = platform.tenant.device("rpc-a"), platform.tenant.device("rpc-b")
    received: dict[str, list[tuple[str, bytes]]] = {"a": [], "b": []}
    clients = {}
    for name, tok in (("a", a_token), ("b", b_token)):
        c = _connected_paho(platform, tok)
        c.on_message = lambda _c, _u, m, name=name: received[name].append((m.topic, m.payload))
        granted: list[Any] = []
        c.on_subscribe = lambda _c, _u, _mid, codes, _p=None, granted=granted: granted.extend(codes)
        c.subscribe([("v1/devices/me/rpc/request/+", 1), ("#", 1), ("v1/devices/other/telemetry", 1)])
        wait_until(lambda granted=granted: len(granted) == 3, message="SUBACK")
        assert not granted[0].is_failure
        assert granted[1].is_failure and granted[2].is_failure  # outside the device API
        clients[name] = c
    try:
        def answer(_c: mqtt.Client, _u: Any, m: mqtt.MQTTMessage) -> None:
            received["a"].append((m.topic, m.payload))
            request_id = m.topic.rsplit("/", 1)[1]
            clients["a"].publish(f"v1/devices/me/rpc/response/{request_id}", b'{"position_pct": 30}', qos=1)

        clients["a"].on_message = answer
        r = platform.http.post(f"/api/devices/{a_id}/rpc", headers=platform.tenant.headers,
                               json={"method": "setValve", "params": {"position_pct": 30}, "timeout_ms": 5000})
        assert r.status_code == 200, r.text
        assert r.json().get("response", r.json()) == {"position_pct": 30}
        assert len(received["a"]) == 1 and orjson.loads(received["a"][0][1]) == {
            "method": "setValve", "params": {"position_pct": 30}}
        time.sleep(0.3)
        assert received["b"] == []  # the same "me" topic, but another device: it saw nothing
    finally:
        for c in clients.values():
            _stop(c)


def test_token_rotation_ends_the_live_session_and_only_the_new_token_connects(platform: Platform) -> None:
    device_id, old_token = platform.tenant.device("cell-2")
    c = _connected_paho(platform, old_token)
    dropped = threading.Event()
    c.on_disconnect = lambda *_a: dropped.set()
    c.reconnect_delay_set(30, 60)  # no quick automatic reconnect with the old token
    try:
        r = platform.http.post(f"/api/devices/{device_id}/token/rotate", headers=platform.tenant.headers)
        assert r.status_code == 200, r.text
        new_token = r.json()["access_token"]
        assert dropped.wait(10), "the session with the rotated token stayed open"
    finally:
        _stop(c)

    refused = paho_client(platform.port, old_token)
    codes: list[Any] = []
    refused.on_connect = lambda _c, _u, _f, rc, _p=None: codes.append(rc)
    refused.connect("127.0.0.1", platform.port)
    refused.loop_start()
    wait_until(lambda: codes, message="CONNACK")
    refused.loop_stop()
    assert codes[0].is_failure

    fresh = _connected_paho(platform, new_token)
    try:
        ts = int(time.time() * 1000)
        _publish_acked(fresh, "v1/devices/me/telemetry", orjson.dumps({"ts": ts, "values": {"level_pct": 12.0}}))
        assert latest(platform.http, platform.tenant, device_id)["level_pct"] == {"ts": ts, "value": 12.0}
    finally:
        _stop(fresh)
