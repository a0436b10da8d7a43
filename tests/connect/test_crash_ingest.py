"""kill -9 of the ingest process in the middle of a QoS 1 stream, then a restart: every point whose
PUBACK the publisher got is stored, none is stored twice, and the stream completes.

Both transports: the embedded broker (the PUBACK comes from the platform itself, only after the
batch is durable) and bridge mode behind Mosquitto (the platform acks Mosquitto only after the
batch is durable; its persistent session makes Mosquitto redeliver the rest after the restart)."""

from __future__ import annotations

import secrets
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest

from ecoplat.migrations_runner import upgrade

sys.path.insert(0, str(Path(__file__).parent))
from mqtt_support import (  # noqa: E402
    SCALED_OUT_BACKEND,
    drop_postgres_database,
    free_port,
    ingest_mosquitto,
    new_database_url,
    raw_series,
    seed_tenant,
    serve_env,
    start_serve,
    stop_process,
    wait_http,
    wait_mqtt,
    wait_until,
)

TOTAL = 2400
RATE_PER_S = 600.0
KILL_AFTER = 900


class QoS1Stream:
    """Publishes TOTAL telemetry messages (ts = base + i) at a steady rate in a thread and records
    which ones the broker acknowledged. paho keeps unacknowledged and unsent messages and resends
    them after it reconnects."""

    def __init__(self, host: str, port: int, topic: str, *, token: str | None) -> None:
        self.base_ts = int(time.time() * 1000) - 7_200_000
        self.topic = topic
        self.published = 0
        # Filled without a lock: set.add/dict assignment are atomic, and taking a lock around
        # client.publish() would deadlock against paho's own callback lock.
        self._acked_mids: set[int] = set()
        self._mid_ts: dict[int, int] = {}
        # paho's thread adds acks while the test thread reads them (a GC callback can switch
        # threads in the middle of copying a dict or a set).
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"stream-{secrets.token_hex(4)}",
                                  clean_session=False)
        if token:
            self.client.username_pw_set(token)
        self.client.max_inflight_messages_set(100)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_publish = self._on_publish
        self.client.connect(host, port, keepalive=10)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _on_publish(self, _c: Any, _u: Any, mid: int, _rc: Any = None, _p: Any = None) -> None:
        with self._lock:
            self._acked_mids.add(mid)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        for i in range(TOTAL):
            ts = self.base_ts + i
            info = self.client.publish(self.topic, orjson.dumps({"ts": ts, "values": {"current_ka": i / 8}}),
                                       qos=1)
            with self._lock:
                self._mid_ts[info.mid] = ts
            self.published = i + 1
            delay = start + (i + 1) / RATE_PER_S - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def acked_snapshot(self) -> set[int]:
        with self._lock:
            return {ts for mid, ts in self._mid_ts.items() if mid in self._acked_mids}

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _stored_ts(base_url: str, tenant: Any, device_id: int, stream: QoS1Stream) -> list[int]:
    with httpx.Client(base_url=base_url, timeout=10) as http:
        return [p["ts"] for p in raw_series(http, tenant, device_id, "current_ka", stream.base_ts,
                                            stream.base_ts + TOTAL)]


def _run_crash(tmp_path: Path, backend: str, *, bridge: tuple[str, int] | None) -> None:
    url = new_database_url(backend, tmp_path)
    upgrade(url)
    tenant = seed_tenant(url, devices=("cell-1",))
    device_id, token = tenant.device("cell-1")
    http_port, mqtt_port = free_port(), free_port()
    extra = {}
    if bridge is not None:
        extra = {"ECOPLAT_MQTT_BRIDGE_URL": f"mqtt://{bridge[0]}:{bridge[1]}",
                 "ECOPLAT_MQTT_BRIDGE_SHARE_GROUP": f"t{secrets.token_hex(4)}"}
    env = serve_env(url, tmp_path / "var", port=http_port, mqtt_port=mqtt_port, **extra)
    base = f"http://127.0.0.1:{http_port}"
    proc = start_serve(env, tmp_path / "serve.log")
    stream: QoS1Stream | None = None
    try:
        wait_http(base, proc)
        if bridge is None:
            wait_mqtt(mqtt_port, token)
            stream = QoS1Stream("127.0.0.1", mqtt_port, "v1/devices/me/telemetry", token=token)
        else:
            time.sleep(1.0)  # the bridge subscribes right after start-up
            stream = QoS1Stream(bridge[0], bridge[1], f"v1/devices/{token}/telemetry", token=None)
        stream.start()
        wait_until(lambda: stream.published >= KILL_AFTER, timeout=30, message="stream under way")
        stop_process(proc, hard=True)  # kill -9, mid-stream
        acked_before_crash = stream.acked_snapshot()
        assert acked_before_crash, "nothing was acknowledged before the crash"

        proc = start_serve(env, tmp_path / "serve.log")
        wait_http(base, proc)
        wait_until(lambda: len(stream.acked_snapshot()) == TOTAL, timeout=90,
                   message="every message acknowledged after the restart")

        stored = wait_until(lambda: (lambda s: s if len(set(s)) >= TOTAL else None)(
            _stored_ts(base, tenant, device_id, stream)), timeout=30, message="all points stored")
        assert acked_before_crash <= set(stored), "an acknowledged point is missing"
        assert len(stored) == len(set(stored)), "a point was stored twice"
        assert sorted(stored) == [stream.base_ts + i for i in range(TOTAL)]
    finally:
        if stream is not None:
            stream.stop()
        stop_process(proc)
        if backend == "postgres":
            drop_postgres_database(url)


@pytest.mark.slow
def test_kill_9_of_the_embedded_broker_loses_no_acknowledged_point_and_doubles_none(
        backend: str, tmp_path: Path) -> None:
    _run_crash(tmp_path, backend, bridge=None)


@pytest.mark.slow
@pytest.mark.mosquitto
def test_kill_9_of_a_bridge_ingest_process_loses_no_point_and_doubles_none(tmp_path: Path) -> None:
    with ingest_mosquitto(tmp_path) as broker:
        _run_crash(tmp_path, SCALED_OUT_BACKEND, bridge=broker)
