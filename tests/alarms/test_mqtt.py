"""Alarms driven through real ingest over MQTT: the whole app runs (telemetry store, ingest
pipeline, embedded amqtt broker, alarm runtime with its ticker); rules are created over the API;
a paho client publishes with the device's access token on the ThingsBoard topic; the alarm
transitions are read back over the API, exactly, with the timestamps the device sent."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient

from ecoplat.config import Settings
from ecoplat.db import Database
from ecoplat.events import Event
from ecoplat.migrations_runner import upgrade

from .builders import SECRET, Plant, make_plant
from .conftest import drop_postgres_database, free_port, new_database_url
from .scenarios import SCENARIOS, Scenario

# An hour ahead of the wall clock, so the app's real ticker (wall time) never runs a delay or a
# stale check on these points before the test's own explicit ticks.
T0 = (int(time.time()) // 60 + 60) * 60_000


@dataclass
class Platform:
    http: TestClient
    app: Any
    database: Database
    port: int
    events: list[Event]


@pytest.fixture(scope="module")
def platform(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    from ecoplat.app import create_app

    tmp = tmp_path_factory.mktemp("alarms-mqtt")
    url = new_database_url(backend, tmp)
    upgrade(url)
    port = free_port()
    settings = Settings(data_dir=tmp / "var", database_url=url, secret_key=SECRET, log_json=False,
                        mqtt_enabled=True, mqtt_host="127.0.0.1", mqtt_port=port, ingest_batch_max_ms=5)
    database = Database(url)
    app = create_app(settings, database=database)
    seen: list[Event] = []
    with TestClient(app) as http:
        remove = app.state.events.add_listener("alarm.", seen.append)
        yield Platform(http, app, database, port, seen)
        remove()
    database.dispose()
    if backend == "postgres":
        drop_postgres_database(url)


def _wait(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def _device_client(platform: Platform, token: str) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"alarm-test-{token[:6]}")
    c.username_pw_set(token)
    connected = threading.Event()
    c.on_connect = lambda *a: connected.set()
    c.connect("127.0.0.1", platform.port, keepalive=30)
    c.loop_start()
    assert connected.wait(10), "no CONNACK from the embedded broker"
    return c


def _publish(platform: Platform, client: mqtt.Client, samples: list[tuple[int, str, Any]]) -> None:
    before = platform.app.state.alarms.points_evaluated
    for ts, key, value in samples:
        info = client.publish("v1/devices/me/telemetry", orjson.dumps({"ts": T0 + ts, "values": {key: value}}), qos=1)
        info.wait_for_publish(10)  # PUBACK comes after the point is durable
    _wait(lambda: platform.app.state.alarms.points_evaluated >= before + len(samples), what="rule evaluation")
    platform.app.state.alarms.drain()


def _transitions(platform: Platform, plant: Plant, rule_id: int) -> list[tuple[str, str, int]]:
    headers = plant.people["operator"].headers
    alarms = platform.http.get("/api/alarms", headers=headers, params={"limit": 500}).json()["items"]
    out: list[tuple[int, str, str, int]] = []
    for a in alarms:
        if a["rule_id"] != rule_id:
            continue
        for t in platform.http.get(f"/api/alarms/{a['id']}/transitions", headers=headers).json():
            at = int(datetime.fromisoformat(t["at"]).timestamp() * 1000) - T0
            out.append((t["id"], t["action"], t["to_state"], at))
    return [(a, s, at) for _, a, s, at in sorted(out)]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_every_rule_kind_through_mqtt_gives_the_exact_transitions(platform: Platform, scenario: Scenario) -> None:
    with platform.database.session() as db:
        plant = make_plant(db, devices=("E-101",))
    engineer = plant.people["engineer"].headers
    rule_ids = []
    for rule in scenario.rules:
        r = platform.http.post("/api/alarm-rules", headers=engineer,
                               json={"device_id": plant.device_id("E-101"), **rule})
        assert r.status_code == 201, r.text
        rule_ids.append(r.json()["id"])
    # The rule is compiled into the running engine once its transaction commits.
    _wait(lambda: all(platform.app.state.alarms.has_rule(rid) for rid in rule_ids), what="rules loaded")
    client = _device_client(platform, plant.devices["E-101"][1])
    try:
        ticks = list(scenario.ticks)
        for sample in scenario.samples:
            while ticks and ticks[0] < sample[0]:
                platform.app.state.alarms.tick(T0 + ticks.pop(0))
            _publish(platform, client, [sample])
        for tick in ticks:
            platform.app.state.alarms.tick(T0 + tick)
        platform.app.state.alarms.drain()
    finally:
        client.disconnect()
        client.loop_stop()
    assert [_transitions(platform, plant, rid) for rid in rule_ids] == scenario.expected
    events = [e for e in platform.events if e.topic == f"alarm.{plant.enterprise_id}"]
    assert len(events) == sum(len(x) for x in scenario.expected)


def test_mqtt_alarm_is_acknowledged_over_the_api_and_the_banner_counts_it(platform: Platform) -> None:
    with platform.database.session() as db:
        plant = make_plant(db, devices=("E-101",))
    r = platform.http.post("/api/alarm-rules", headers=plant.people["engineer"].headers,
                           json={"device_id": plant.device_id("E-101"), "kind": "high", "key": "cl2_ppm",
                                 "params": {"limit": 1.0}, "priority": 1})
    rule_id = r.json()["id"]
    _wait(lambda: platform.app.state.alarms.has_rule(rule_id), what="rule loaded")
    client = _device_client(platform, plant.devices["E-101"][1])
    try:
        _publish(platform, client, [(0, "cl2_ppm", 0.2), (1000, "cl2_ppm", 3.5)])
    finally:
        client.disconnect()
        client.loop_stop()
    operator = plant.people["operator"].headers
    (alarm,) = platform.http.get("/api/alarms", headers=operator).json()["items"]
    assert alarm["state"] == "unacknowledged" and alarm["value"] == 3.5
    assert platform.http.get("/api/alarms/unacknowledged-count", headers=operator).json() == {"count": 1}
    r = platform.http.post(f"/api/alarms/{alarm['id']}/ack", headers=operator, json={"note": "evacuating bay 3"})
    assert r.status_code == 200 and r.json()["state"] == "acknowledged"
    _wait(lambda: any(e.data.get("transition") == "acknowledge" and e.data["id"] == alarm["id"]
                      for e in platform.events), what="acknowledge event on the bus")
    assert platform.http.get("/api/alarms/unacknowledged-count", headers=operator).json() == {"count": 0}




def test_the_running_ticker_raises_stale_data_alarms_on_wall_time(platform: Platform) -> None:
    with platform.database.session() as db:
        plant = make_plant(db, devices=("E-101",))
    r = platform.http.post("/api/alarm-rules", headers=plant.people["engineer"].headers,
                           json={"device_id": plant.device_id("E-101"), "kind": "stale", "key": "cl2_ppm",
                                 "params": {"seconds": 1}, "priority": 2})
    rule_id = r.json()["id"]
    _wait(lambda: platform.app.state.alarms.has_rule(rule_id), what="rule loaded")
    client = _device_client(platform, plant.devices["E-101"][1])
    try:
        sent = int(time.time() * 1000)
        info = client.publish("v1/devices/me/telemetry", orjson.dumps({"ts": sent, "values": {"cl2_ppm": 0.3}}), qos=1)
        info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()
    operator = plant.people["operator"].headers

    def stale_alarm() -> list[dict[str, Any]]:
        return [a for a in platform.http.get("/api/alarms", headers=operator).json()["items"]
                if a["rule_id"] == rule_id]

    (alarm,) = _wait(stale_alarm, timeout=10, what="stale-data alarm from the ticker")
    raised = int(datetime.fromisoformat(alarm["first_triggered_at"]).timestamp() * 1000)
    # No value for more than 1 s, noticed by a tick at most a tick interval (1 s) later.
    assert sent + 1000 < raised <= sent + 1000 + 2500
    assert alarm["state"] == "unacknowledged"
