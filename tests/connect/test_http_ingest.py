"""The ThingsBoard HTTP device API end to end: the app's real lifespan (telemetry store, ingest
pipeline), values read back over REST, every bad input rejected, counted, and ingest still healthy."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.connect.builders import SECRET, make_actor
from tests.connect.conftest import seed

from ecoplat.app import create_app
from ecoplat.config import Settings
from ecoplat.db import Database
from ecoplat.tenancy.models import Role

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def live(module_database_url: str, tmp_path: Path) -> Iterator[tuple[TestClient, Database]]:
    settings = Settings(data_dir=tmp_path / "var", database_url=module_database_url, secret_key=SECRET,
                        mqtt_enabled=False, log_json=False, ingest_batch_max_ms=5, max_payload_bytes=4096)
    database = Database(module_database_url)
    app = create_app(settings, database=database)
    with TestClient(app) as client:
        yield client, database
    database.dispose()


def test_telemetry_and_attributes_round_trip(live):
    client, database = live
    tenant = seed(database, "E-101")
    device_id, token = tenant.devices["E-101"]
    for name in ("tb_telemetry_ts_values.json", "tb_telemetry_array.json"):
        r = client.post(f"/api/v1/{token}/telemetry", content=(FIXTURES / name).read_bytes(),
                        headers={"content-type": "application/json"})
        assert r.status_code == 200 and r.content == b""
    r = client.post(f"/api/v1/{token}/telemetry", json={"ts": 1764201602000, "values": {
        "running": True, "mode": "auto", "alarms": 3, "ratio": 0.1 + 0.2}})
    assert r.status_code == 200
    # durable when answered: readable at once, exactly as sent
    got = client.get(f"/api/devices/{device_id}/telemetry", headers=tenant.headers,
                     params={"start": 1764201600000, "end": 1764201603000}).json()
    assert got["current_ka"] == [{"ts": 1764201600000, "value": 14.2}, {"ts": 1764201601000, "value": 14.3}]
    assert got["cell_voltage_v"] == [{"ts": 1764201600000, "value": 3.05}]
    assert got["running"] == [{"ts": 1764201602000, "value": True}]
    assert got["mode"] == [{"ts": 1764201602000, "value": "auto"}]
    assert got["alarms"] == [{"ts": 1764201602000, "value": 3}]
    assert got["ratio"] == [{"ts": 1764201602000, "value": 0.30000000000000004}]
    latest = client.get(f"/api/devices/{device_id}/telemetry/latest", headers=tenant.headers).json()
    assert latest["brine_ph"]["value"] == 2.1  # the entry without ts got the server's time

    # The status counters are written apart from the points: once the queue has been empty for
    # a moment (ingest.STATUS_IDLE_FLUSH_S), at most every STATUS_FLUSH_INTERVAL_S under load.
    deadline = time.monotonic() + 5
    while True:
        device = client.get(f"/api/devices/{device_id}", headers=tenant.headers).json()
        if (device["messages_total"], device["points_total"]) == (3, 9) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert device["status"] == "online"
    assert (device["messages_total"], device["points_total"]) == (3, 9)

    r = client.post(f"/api/v1/{token}/attributes", content=(FIXTURES / "tb_attributes.json").read_bytes())
    assert r.status_code == 200
    client.post(f"/api/devices/{device_id}/attributes", params={"scope": "shared"},
                json={"alarm_ppm": 1.5, "interval_s": 10}, headers=tenant.headers)
    assert client.get(f"/api/v1/{token}/attributes").json() == {
        "client": {"firmware": "1.4.2", "serial": "CD-3-0042", "calibrated": True, "config": {"alarm_ppm": [1, 3]}},
        "shared": {"alarm_ppm": 1.5, "interval_s": 10}}
    assert client.get(f"/api/v1/{token}/attributes", params={"clientKeys": "firmware", "sharedKeys": "interval_s"}
                      ).json() == {"client": {"firmware": "1.4.2"}, "shared": {"interval_s": 10}}
    assert client.get(f"/api/v1/{token}/attributes", params={"sharedKeys": "alarm_ppm"}).json() == {
        "client": {}, "shared": {"alarm_ppm": 1.5}}


BAD = [
    ("bad_malformed.txt", 400, "malformed_json"),
    ("bad_invalid_utf8.bin", 400, "malformed_json"),
    ("bad_infinity_only.json", 400, "non_finite"),
    ("bad_list_value.json", 400, "wrong_type"),
    ("bad_negative_ts.json", 400, "bad_ts"),
    ("bad_future_ts.json", 400, "bad_ts"),
    ("bad_string_top.json", 400, "not_an_object"),
    ("bad_empty_object.json", 400, "empty"),
    ("bad_empty.txt", 400, "empty"),
]


def test_every_bad_input_is_rejected_counted_and_ingest_stays_healthy(live):
    client, database = live
    tenant = seed(database, "cl2-detector-1", "other")
    device_id, token = tenant.devices["cl2-detector-1"]
    expected: dict[str, int] = {}
    for name, status, reason in BAD:
        r = client.post(f"/api/v1/{token}/telemetry", content=(FIXTURES / name).read_bytes())
        assert r.status_code == status, (name, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["reason"] == reason and r.json()["detail"]
        expected[reason] = expected.get(reason, 0) + 1
    too_big = b'{"k": "' + b"x" * 5000 + b'"}'
    r = client.post(f"/api/v1/{token}/telemetry", content=too_big)
    assert r.status_code == 413 and r.json()["reason"] == "payload_too_large"
    expected["payload_too_large"] = 1
    r = client.post(f"/api/v1/{token}/attributes", content=b"[1, 2]")
    assert r.status_code == 400 and r.json()["reason"] == "not_an_object"
    expected["not_an_object"] += 1

    # one bad value among good ones: 200, the good value stored, the bad one counted
    r = client.post(f"/api/v1/{token}/telemetry", content=(FIXTURES / "bad_nan_token.json").read_bytes())
    assert r.status_code == 200
    expected["non_finite"] += 1
    latest = client.get(f"/api/devices/{device_id}/telemetry/latest", headers=tenant.headers).json()
    assert latest["pressure_kpa"]["value"] == 101.3 and "temperature" not in latest

    # unknown tokens answer 401 and are counted for "unknown sender", not for any device
    r = client.post("/api/v1/not-a-real-token/telemetry", json={"a": 1})
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"

    # still healthy: a good message goes through
    assert client.post(f"/api/v1/{token}/telemetry", json={"cl2_ppm": 0.3}).status_code == 200
    errors = client.get(f"/api/devices/{device_id}/errors", headers=tenant.headers).json()
    assert {e["reason"]: e["count"] for e in errors["by_reason"]} == expected
    assert errors["errors_total"] == sum(expected.values())
    assert errors["recent"][0]["reason"] == "non_finite"
    other_errors = client.get(f"/api/devices/{tenant.devices['other'][0]}/errors", headers=tenant.headers).json()
    assert other_errors["by_reason"] == [] and other_errors["errors_total"] == 0


def test_rotated_and_revoked_tokens_stop_working_at_once(live):
    client, database = live
    tenant = seed(database, "pump-7")
    device_id, old = tenant.devices["pump-7"]
    assert client.post(f"/api/v1/{old}/telemetry", json={"flow_m3h": 12.5}).status_code == 200
    new = client.post(f"/api/devices/{device_id}/token/rotate", headers=tenant.headers).json()["access_token"]
    r = client.post(f"/api/v1/{old}/telemetry", json={"flow_m3h": 1})
    assert r.status_code == 401
    assert client.post(f"/api/v1/{new}/telemetry", json={"flow_m3h": 13.0}).status_code == 200
    assert client.post(f"/api/devices/{device_id}/token/revoke", headers=tenant.headers).status_code == 200
    r = client.post(f"/api/v1/{new}/telemetry", json={"flow_m3h": 2})
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    latest = client.get(f"/api/devices/{device_id}/telemetry/latest", headers=tenant.headers).json()
    assert latest["flow_m3h"]["value"] == 13.0
    errors = client.get(f"/api/devices/{device_id}/errors", headers=tenant.headers).json()
    assert {e["reason"]: e["count"] for e in errors["by_reason"]} == {"revoked_token": 1}


def test_two_way_rpc_answers_with_the_devices_response_or_408(live):
    client, database = live
    tenant = seed(database, "valve-3")
    device_id, _ = tenant.devices["valve-3"]
    app = client.app
    asked = []

    def device_side(event) -> None:  # type: ignore[no-untyped-def]
        # what the MQTT transport does with the device's answer on v1/devices/me/rpc/response/{id}
        asked.append(event.data)
        if event.data["method"] == "getValve":
            threading.Timer(0.05, app.state.ingest.rpc_response,
                            args=(device_id, event.data["id"], {"open": False, "position_pct": 0})).start()

    app.state.events.add_listener(f"rpc.{tenant.enterprise_id}.{device_id}", device_side)
    r = client.post(f"/api/devices/{device_id}/rpc", json={"method": "getValve", "params": {}, "timeout_ms": 3000},
                    headers=tenant.headers)
    assert r.status_code == 200, r.text
    assert r.json()["response"] == {"open": False, "position_pct": 0}
    r = client.post(f"/api/devices/{device_id}/rpc", json={"method": "reboot", "timeout_ms": 200},
                    headers=tenant.headers)
    assert r.status_code == 408 and r.headers["content-type"] == "application/problem+json"
    assert [a["method"] for a in asked] == ["getValve", "reboot"]


def test_an_http_device_long_polls_for_rpc_and_answers(server):
    import httpx

    base, database = server
    tenant = seed(database, "valve-9", "other")
    device_id, token = tenant.devices["valve-9"]
    got: dict[str, object] = {}

    def device() -> None:
        with httpx.Client(base_url=base, timeout=20) as http:
            r = http.get(f"/api/v1/{token}/rpc", params={"timeout": 10_000})
            got["request"] = r.json()
            answer = {"position_pct": 42 if r.json()["params"]["valve"] == "V-9" else -1}
            got["reply"] = http.post(f"/api/v1/{token}/rpc/{r.json()['id']}", json=answer).status_code

    with httpx.Client(base_url=base, timeout=20) as http:
        # nothing asked: the poll ends with 408 after its timeout
        assert http.get(f"/api/v1/{token}/rpc", params={"timeout": 200}).status_code == 408
        thread = threading.Thread(target=device)
        thread.start()
        time.sleep(0.5)  # the device is polling now
        # an RPC to another device is not delivered to this one
        other_id = tenant.devices["other"][0]
        r = http.post(f"/api/devices/{other_id}/rpc", json={"method": "x", "timeout_ms": 200}, headers=tenant.headers)
        assert r.status_code == 408
        r = http.post(f"/api/devices/{device_id}/rpc", json={"method": "getPosition", "params": {"valve": "V-9"},
                                                             "timeout_ms": 5000}, headers=tenant.headers)
        thread.join(10)
    assert r.status_code == 200, r.text
    assert r.json()["response"] == {"position_pct": 42}
    assert got["request"]["method"] == "getPosition" and got["reply"] == 200


def test_unknown_senders_are_counted_for_platform_admins_only(live):
    client, database = live
    tenant = seed(database, "pump-1")
    with database.session() as s:
        admin = make_actor(s, enterprise_id=tenant.enterprise_id, role=Role.platform_admin)
    before = {r["reason"]: r["count"] for r in
              client.get("/api/devices/unknown-sender-rejects", headers=admin.headers).json()}
    for _ in range(3):
        assert client.post("/api/v1/not-a-token-at-all/telemetry", json={"a": 1}).status_code == 401
    after = client.get("/api/devices/unknown-sender-rejects", headers=admin.headers).json()
    assert {r["reason"]: r["count"] for r in after}["unknown_token"] == before.get("unknown_token", 0) + 3
    assert client.get("/api/devices/unknown-sender-rejects", headers=tenant.headers).status_code == 403


def test_an_http_device_long_polls_for_shared_attribute_updates(server):
    import httpx

    base, database = server
    tenant = seed(database, "cl2-7")
    device_id, token = tenant.devices["cl2-7"]
    got: dict[str, object] = {}

    def device() -> None:
        with httpx.Client(base_url=base, timeout=20) as http:
            r = http.get(f"/api/v1/{token}/attributes/updates", params={"timeout": 10_000})
            got["status"], got["body"] = r.status_code, r.json()

    with httpx.Client(base_url=base, timeout=20) as http:
        assert http.get(f"/api/v1/{token}/attributes/updates", params={"timeout": 150}).status_code == 408
        thread = threading.Thread(target=device)
        thread.start()
        time.sleep(0.5)
        r = http.post(f"/api/devices/{device_id}/attributes", params={"scope": "shared"},
                      json={"alarm_ppm": 0.34}, headers=tenant.headers)
        assert r.status_code == 200
        thread.join(10)
    assert got == {"status": 200, "body": {"alarm_ppm": 0.34}}


def test_deleting_a_device_deletes_its_telemetry_history(live):
    """Points, rollups and latest values of a deleted device are deleted with it; another
    device's history stays."""
    from ecoplat.telemetry.store import store_for

    client, database = live
    tenant = seed(database, "E-101", "E-102")
    (gone, gone_token), (kept, kept_token) = tenant.devices["E-101"], tenant.devices["E-102"]
    for token in (gone_token, kept_token):
        for i in range(3):
            r = client.post(f"/api/v1/{token}/telemetry", json={"ts": 1_764_201_600_000 + i * 1000,
                                                                "values": {"current_ka": 14.0 + i}})
            assert r.status_code == 200, r.text
    store = store_for(client.app)
    before = store.range(gone, ["current_ka"], 0, 2**53)["current_ka"]
    assert [s.value for s in before] == [14.0, 15.0, 16.0]
    assert client.delete(f"/api/devices/{gone}", headers=tenant.headers).status_code == 204
    assert store.series_of(gone) == {}
    assert store.range(gone, ["current_ka"], 0, 2**53)["current_ka"] == []
    assert store.latest(gone) == {}
    assert [s.value for s in store.range(kept, ["current_ka"], 0, 2**53)["current_ka"]] == [14.0, 15.0, 16.0]
    assert store.latest(kept)["current_ka"].value == 16.0

