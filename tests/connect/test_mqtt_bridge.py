"""Bridge mode against the CI Mosquitto: Debian's mosquitto_pub publishes, the platform consumes
through MQTT 5 shared subscriptions; two real ingest processes split the load with every message
handled exactly once."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import func, select

from ecoplat.connect.models import Device, DeviceErrorLog
from ecoplat.db import Database
from ecoplat.migrations_runner import upgrade

sys.path.insert(0, str(Path(__file__).parent))
from mqtt_support import (  # noqa: E402
    SCALED_OUT_BACKEND,
    Tenant,
    drop_postgres_database,
    errors_by_reason,
    free_port,
    ingest_mosquitto,
    latest,
    new_database_url,
    platform_settings,
    raw_series,
    running_platform,
    seed_tenant,
    serve_env,
    start_serve,
    stop_process,
    wait_http,
    wait_until,
)

MOSQUITTO_PUB = "/usr/bin/mosquitto_pub"


@dataclass
class Bridge:
    http: Any
    tenant: Tenant
    broker: tuple[str, int]


@pytest.fixture(scope="module")
def bridge(backend: str, mosquitto: tuple[str, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridge]:
    tmp = tmp_path_factory.mktemp("mqtt-bridge")
    url = new_database_url(backend, tmp)
    upgrade(url)
    tenant = seed_tenant(url, devices=("tank-1", "bad-1"), gateways=("gw-1",))
    host, port = mosquitto
    # A share group of its own, so no other consumer on this broker takes our messages.
    settings = platform_settings(url, tmp / "var", port=free_port(), mqtt_bridge_url=f"mqtt://{host}:{port}",
                                 mqtt_bridge_share_group=f"t{secrets.token_hex(4)}")
    with running_platform(settings) as http:
        wait_until(lambda: http.app.state.mqtt_bridge.connected.is_set(), message="bridge connected")
        time.sleep(0.3)  # SUBACK
        yield Bridge(http, tenant, mosquitto)
    if backend == "postgres":
        drop_postgres_database(url)


def _mosquitto_pub(broker: tuple[str, int], topic: str, message: bytes) -> None:
    subprocess.run([MOSQUITTO_PUB, "-h", broker[0], "-p", str(broker[1]), "-q", "1", "-t", topic, "-s"],
                   input=message, check=True, timeout=10)


def test_mosquitto_pub_telemetry_is_stored_exactly_through_the_bridge(bridge: Bridge) -> None:
    device_id, token = bridge.tenant.device("tank-1")
    ts = int(time.time() * 1000) - 3_000
    _mosquitto_pub(bridge.broker, f"v1/devices/{token}/telemetry",
                   orjson.dumps({"ts": ts, "values": {"level_pct": 71.25, "pressure_kpa": 301.5, "alarm": False}}))
    got = wait_until(lambda: (lambda v: v if "alarm" in v else None)(latest(bridge.http, bridge.tenant, device_id)),
                     message="bridged telemetry stored")
    assert got == {"level_pct": {"ts": ts, "value": 71.25}, "pressure_kpa": {"ts": ts, "value": 301.5},
                   "alarm": {"ts": ts, "value": False}}


def _child_id(bridge: Bridge, gateway_id: int, name: str) -> int | None:
    database = Database(bridge.http.app.state.settings.resolved_database_url)
    try:
        with database.session() as s:
            return s.scalar(select(Device.id).where(Device.gateway_id == gateway_id, Device.name == name))
    finally:
        database.dispose()


def test_gateway_payload_through_the_bridge_creates_children(bridge: Bridge) -> None:
    gw_id, gw_token = bridge.tenant.device("gw-1")
    ts = int(time.time() * 1000) - 1_000
    _mosquitto_pub(bridge.broker, f"v1/gateway/{gw_token}/telemetry",
                   orjson.dumps({"Chlorine detector 2": [{"ts": ts, "values": {"cl2_ppm": 0.4}}]}))

    child_id = wait_until(lambda: _child_id(bridge, gw_id, "Chlorine detector 2"), message="child device created")
    assert wait_until(lambda: latest(bridge.http, bridge.tenant, child_id).get("cl2_ppm")) == {"ts": ts, "value": 0.4}

    # A known child now takes the fast path (parsed in the bridge's own thread): every value type
    # is kept, and a bad value is dropped alone and counted against the gateway.
    ts2 = ts + 500
    _mosquitto_pub(bridge.broker, f"v1/gateway/{gw_token}/telemetry", orjson.dumps(
        {"Chlorine detector 2": [{"ts": ts2, "values": {"cl2_ppm": 0.5, "fan_on": True, "mode": "purge", "n": 3}},
                                 {"ts": ts2 + 1, "values": {"cl2_ppm": 0.6, "huge": 1}}]}))
    want = {"cl2_ppm": {"ts": ts2 + 1, "value": 0.6}, "fan_on": {"ts": ts2, "value": True},
            "mode": {"ts": ts2, "value": "purge"}, "n": {"ts": ts2, "value": 3}, "huge": {"ts": ts2 + 1, "value": 1}}
    assert wait_until(lambda: (lambda v: v if v.get("cl2_ppm", {}).get("ts") == ts2 + 1 else None)(
        latest(bridge.http, bridge.tenant, child_id)), message="fast-path telemetry stored") == want
    _mosquitto_pub(bridge.broker, f"v1/gateway/{gw_token}/telemetry",
                   b'{"Chlorine detector 2": [{"ts": %d, "values": {"cl2_ppm": NaN, "t_c": 21.5}}]}' % (ts2 + 2))
    assert wait_until(lambda: latest(bridge.http, bridge.tenant, child_id).get("t_c")) == {"ts": ts2 + 2, "value": 21.5}
    assert latest(bridge.http, bridge.tenant, child_id)["cl2_ppm"] == {"ts": ts2 + 1, "value": 0.6}
    assert wait_until(lambda: errors_by_reason(bridge.http, bridge.tenant, gw_id).get("non_finite")) == 1

    # A message naming a known child and a new one goes the slow way, and both are stored.
    ts3 = ts2 + 1000
    _mosquitto_pub(bridge.broker, f"v1/gateway/{gw_token}/telemetry", orjson.dumps(
        {"Chlorine detector 2": [{"ts": ts3, "values": {"cl2_ppm": 0.7}}],
         "Chlorine detector 5": [{"ts": ts3, "values": {"cl2_ppm": 1.1}}]}))
    assert wait_until(lambda: latest(bridge.http, bridge.tenant, child_id)["cl2_ppm"]["ts"] == ts3 or None)

    other = wait_until(lambda: _child_id(bridge, gw_id, "Chlorine detector 5"), message="second child created")
    assert wait_until(lambda: latest(bridge.http, bridge.tenant, other).get("cl2_ppm")) == {"ts": ts3, "value": 1.1}


def test_bad_input_through_the_bridge_is_counted_and_the_bridge_keeps_going(bridge: Bridge) -> None:
    device_id, token = bridge.tenant.device("bad-1")
    _mosquitto_pub(bridge.broker, f"v1/devices/{token}/telemetry", b'{"level_pct": ')
    _mosquitto_pub(bridge.broker, f"v1/devices/{token}/telemetry", b'{"level_pct": NaN}')
    _mosquitto_pub(bridge.broker, "v1/devices/not-a-token-at-all/telemetry", b'{"level_pct": 1}')
    ts = int(time.time() * 1000)
    _mosquitto_pub(bridge.broker, f"v1/devices/{token}/telemetry", orjson.dumps({"ts": ts, "values": {"ok": 1}}))
    assert wait_until(lambda: latest(bridge.http, bridge.tenant, device_id).get("ok")) == {"ts": ts, "value": 1}
    counts = wait_until(lambda: (lambda c: c if len(c) >= 2 else None)(
        errors_by_reason(bridge.http, bridge.tenant, device_id)), message="rejects counted")
    assert counts == {"malformed_json": 1, "non_finite": 1}

    def unknown() -> int:
        # Counted from the error log, by the token's prefix: other platforms on this broker (the
        # other tests' bridges, run side by side) publish with tokens this one does not know.
        database = Database(bridge.http.app.state.settings.resolved_database_url)
        try:
            with database.session() as s:
                return s.scalar(select(func.count()).select_from(DeviceErrorLog).where(
                    DeviceErrorLog.device_id.is_(None), DeviceErrorLog.reason == "unknown_token",
                    DeviceErrorLog.detail.contains("unknown access token not-…"))) or 0
        finally:
            database.dispose()

    bridge.http.get(f"/api/devices/{device_id}/errors", headers=bridge.tenant.headers)  # flushes counters
    assert wait_until(unknown, message="unknown token counted") == 1


def _bridge_messages(base_url: str) -> float:
    text = httpx.get(base_url + "/metrics", timeout=5).text
    m = re.search(r"^ecoplat_mqtt_bridge_messages_total (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def publish_stream(broker: tuple[str, int], topics_and_payloads: list[tuple[str, bytes]], *,
                   rate_per_s: float | None = None) -> None:
    """QoS 1 publishes, each confirmed by the broker's PUBACK."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{secrets.token_hex(4)}")
    c.max_inflight_messages_set(200)
    c.connect(broker[0], broker[1])
    c.loop_start()
    try:
        infos = []
        start = time.monotonic()
        for i, (topic, payload) in enumerate(topics_and_payloads):
            infos.append(c.publish(topic, payload, qos=1))
            if rate_per_s:
                delay = start + (i + 1) / rate_per_s - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        for info in infos:
            info.wait_for_publish(30)
            assert info.is_published()
    finally:
        c.disconnect()
        c.loop_stop()


@pytest.mark.slow
@pytest.mark.mosquitto
def test_two_ingest_processes_share_the_load_and_store_every_point_exactly_once(tmp_path: Path) -> None:
    with ingest_mosquitto(tmp_path) as broker:
        _two_processes(SCALED_OUT_BACKEND, broker, tmp_path)


def _two_processes(backend: str, mosquitto: tuple[str, int], tmp_path: Path) -> None:
    url = new_database_url(backend, tmp_path)
    upgrade(url)
    tenant = seed_tenant(url, devices=tuple(f"meter-{i}" for i in range(4)))
    group = f"t{secrets.token_hex(4)}"
    procs, bases = [], []
    try:
        for n in range(2):
            port = free_port()
            env = serve_env(url, tmp_path / f"var{n}", port=port, mqtt_port=free_port(),
                            ECOPLAT_MQTT_BRIDGE_URL=f"mqtt://{mosquitto[0]}:{mosquitto[1]}",
                            ECOPLAT_MQTT_BRIDGE_SHARE_GROUP=group)
            procs.append(start_serve(env, tmp_path / f"serve{n}.log"))
            bases.append(f"http://127.0.0.1:{port}")
        for proc, base in zip(procs, bases, strict=True):
            wait_http(base, proc)
        time.sleep(1.0)  # both subscribed

        per_device = 500
        base_ts = int(time.time() * 1000) - 3_600_000
        messages = [(f"v1/devices/{tenant.device(f'meter-{d}')[1]}/telemetry",
                     orjson.dumps({"ts": base_ts + i, "values": {"energy_kwh": float(i)}}))
                    for i in range(per_device) for d in range(4)]
        publish_stream(mosquitto, messages)

        with httpx.Client(base_url=bases[0], timeout=10) as http:
            for d in range(4):
                device_id = tenant.device(f"meter-{d}")[0]
                series = wait_until(lambda device_id=device_id: (lambda s: s if len(s) >= per_device else None)(
                    raw_series(http, tenant, device_id, "energy_kwh", base_ts, base_ts + per_device)),
                    timeout=30, message=f"all points of meter-{d}")
                assert [p["ts"] for p in series] == [base_ts + i for i in range(per_device)]
                assert [p["value"] for p in series] == [float(i) for i in range(per_device)]
        handled = [_bridge_messages(b) for b in bases]
        assert sum(handled) == len(messages), handled  # each message handled by exactly one process
        assert all(h > len(messages) * 0.1 for h in handled), handled  # and both took a share
    finally:
        for proc in procs:
            stop_process(proc)
        if backend == "postgres":
            drop_postgres_database(url)
