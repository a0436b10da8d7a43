"""The telemetry REST API: latest, ranges, aggregates, keys, CSV, live SSE and retention, with
tenant isolation and clear 422s."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import httpx
import orjson
from sqlalchemy import select

from ecoplat.telemetry.importer import import_csv
from ecoplat.telemetry.points import Point
from ecoplat.tenancy.models import AuditEvent

from .builders import T0, add_device
from .conftest import ApiEnv


def _write(api: ApiEnv, tenant_devices: dict, name: str, enterprise_id: int, rows: list) -> int:
    dev = tenant_devices[name][0]
    api.store.write([Point(dev, k, ts, v) for k, ts, v in rows], {dev: enterprise_id})
    return dev


def test_latest_and_keys_answer_exact_values_and_filter_keys(api: ApiEnv) -> None:
    dev = _write(api, api.a.devices, "E-101", api.a.enterprise_id,
                 [("current_ka", T0, 12.5), ("current_ka", T0 + 1000, 12.75), ("running", T0, True),
                  ("mode", T0 + 500, "auto")])
    r = api.client.get(f"/api/devices/{dev}/telemetry/latest", headers=api.a.operator_headers)
    assert r.status_code == 200, r.text
    assert r.json() == {"current_ka": {"ts": T0 + 1000, "value": 12.75}, "mode": {"ts": T0 + 500, "value": "auto"},
                        "running": {"ts": T0, "value": True}}
    r = api.client.get(f"/api/devices/{dev}/telemetry/latest", params={"keys": "running, mode"},
                       headers=api.a.operator_headers)
    assert r.json() == {"mode": {"ts": T0 + 500, "value": "auto"}, "running": {"ts": T0, "value": True}}
    r = api.client.get(f"/api/devices/{dev}/telemetry/keys", headers=api.a.operator_headers)
    assert r.json() == ["current_ka", "mode", "running"]


def test_range_raw_and_aggregated_per_interval(api: ApiEnv) -> None:
    dev = _write(api, api.a.devices, "E-102", api.a.enterprise_id,
                 [("temp_c", T0 + i * 30_000, float(i)) for i in range(240)])  # 2 h, one per 30 s
    base = f"/api/devices/{dev}/telemetry"
    r = api.client.get(base, params={"keys": "temp_c", "start": T0, "end": T0 + 90_000},
                       headers=api.a.admin_headers)
    assert r.json() == {"temp_c": [{"ts": T0, "value": 0.0}, {"ts": T0 + 30_000, "value": 1.0},
                                   {"ts": T0 + 60_000, "value": 2.0}]}
    r = api.client.get(base, params={"keys": "temp_c", "start": "2025-11-27T00:00:00Z",
                                     "end": "2025-11-27T02:00:00+00:00", "interval": "1h", "agg": "avg"},
                       headers=api.a.admin_headers)
    assert r.json() == {"temp_c": [{"ts": T0, "value": 59.5}, {"ts": T0 + 3_600_000, "value": 179.5}]}
    for agg, first in (("min", 0.0), ("max", 29.0), ("count", 30), ("sum", sum(range(30)))):
        r = api.client.get(base, params={"start": T0, "end": T0 + 7_200_000, "interval": "15m", "agg": agg},
                           headers=api.a.admin_headers)
        body = r.json()["temp_c"]
        assert len(body) == 8 and body[0] == {"ts": T0, "value": first}, (agg, body[:2])
    r = api.client.get(base, params={"start": T0, "end": T0 + 7_200_000, "limit": 2}, headers=api.a.admin_headers)
    assert r.json()["temp_c"] == [{"ts": T0, "value": 0.0}, {"ts": T0 + 30_000, "value": 1.0}]
    r = api.client.get(base, params={"start": T0, "end": T0 + 7_200_000, "limit": 2, "order": "desc"},
                       headers=api.a.admin_headers)
    assert r.json()["temp_c"] == [{"ts": T0 + 239 * 30_000, "value": 239.0}, {"ts": T0 + 238 * 30_000, "value": 238.0}]


def test_another_tenants_device_answers_404_on_every_telemetry_route(api: ApiEnv, live_server: str) -> None:
    dev = _write(api, api.a.devices, "T-201", api.a.enterprise_id, [("ppm", T0, 0.4)])
    for path in ("telemetry/latest", "telemetry/keys", "telemetry", "telemetry.csv"):
        r = api.client.get(f"/api/devices/{dev}/{path}", headers=api.b.admin_headers)
        assert r.status_code == 404, (path, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "0.4" not in r.text
    r = httpx.get(f"{live_server}/api/devices/{dev}/live", headers=api.b.admin_headers, timeout=5)
    assert r.status_code == 404
    assert api.client.get(f"/api/devices/{dev}/telemetry/latest").status_code == 401


def test_bad_ranges_answer_422_naming_the_parameter(api: ApiEnv) -> None:
    dev = api.a.devices["E-101"][0]
    cases = [({"start": T0, "end": T0}, "end"), ({"start": T0 + 5, "end": T0}, "end"),
             ({"start": "yesterday"}, "start"), ({"end": "2025-13-40"}, "end"),
             ({"start": T0, "end": T0 + 1000, "interval": "5 parsecs"}, "interval"),
             ({"start": T0, "end": T0 + 1000, "agg": "max"}, "interval"),
             ({"start": T0, "end": T0 + 60_000, "interval": "1m", "agg": "median"}, "agg"),
             ({"start": 0, "end": T0, "interval": "1s"}, "interval"),
             ({"start": T0, "end": T0 + 1000, "interval": "10ms"}, "interval"),
             ({"start": -5, "end": T0}, "start"), ({"limit": 0}, "limit"), ({"limit": 10**7}, "limit"),
             ({"order": "sideways"}, "order"), ({"end": 10**30}, "end"),
             ({"start": T0, "end": T0 + 1000, "interval": "99999999999999999999d"}, "interval")]
    for params, field in cases:
        for path in ("telemetry", "telemetry.csv"):
            if path == "telemetry.csv" and field in ("limit", "order"):
                continue
            r = api.client.get(f"/api/devices/{dev}/{path}", params=params, headers=api.a.admin_headers)
            assert r.status_code == 422, (params, r.text)
            body = r.json()
            assert r.headers["content-type"].startswith("application/problem+json")
            assert body["errors"][0]["field"].endswith(field), (params, body)


def test_csv_export_round_trips_through_the_importer(api: ApiEnv, tmp_path: Path) -> None:
    rows = [("level_pct", T0 + i * 1000, 40.0 + i / 8) for i in range(6_000)]
    rows += [("pump_on", T0 + i * 60_000, i % 2 == 0) for i in range(5)]
    rows += [("alarm_text", T0 + 7, "Cl2 high, check scrubber"), ("cfg", T0, {"a": [1, 2]})]
    with api.database.session() as s:
        src = add_device(s, api.a, "CSV-SRC")
        dst = add_device(s, api.a, "CSV-DST")
    api.store.write([Point(src, k, ts, v) for k, ts, v in rows], {src: api.a.enterprise_id})
    r = api.client.get(f"/api/devices/{src}/telemetry.csv",
                       params={"start": T0, "end": T0 + 86_400_000}, headers=api.a.operator_headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    exported = list(csv.reader(io.StringIO(r.text)))
    assert exported[0] == ["device", "ts", "key", "value"] and len(exported) == 1 + len(rows)
    # Import it as the other device, named by its access token.
    token = api.a.devices["CSV-DST"][1]
    path = tmp_path / "history.csv"
    path.write_text("\n".join([",".join(exported[0])] + [
        io_row(token, row[1:]) for row in exported[1:]]) + "\n")
    result = import_csv(api.database, api.store, path)
    assert (result.imported, result.rejected) == (len(rows), 0), result.errors
    keys = ["alarm_text", "cfg", "level_pct", "pump_on"]
    assert api.store.keys(dst) == keys
    assert api.store.range(dst, keys, T0, T0 + 86_400_000, limit=100_000) == \
        api.store.range(src, keys, T0, T0 + 86_400_000, limit=100_000)
    # aggregated export: one row per interval
    r = api.client.get(f"/api/devices/{src}/telemetry.csv", headers=api.a.operator_headers,
                       params={"keys": "level_pct", "start": T0, "end": T0 + 3_600_000, "interval": "1h",
                               "agg": "count"})
    assert r.text.splitlines()[1:] == [f"{src},{T0},level_pct,3600"]


def io_row(device: str, rest: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow([device, *rest])
    return buf.getvalue()


def test_live_sends_a_snapshot_then_published_points_and_heartbeats(api: ApiEnv, live_server: str) -> None:
    with api.database.session() as s:
        dev = add_device(s, api.a, "LIVE-1")
        other = add_device(s, api.a, "LIVE-2")
    api.store.write([Point(dev, "current_ka", T0, 11.0)], {dev: api.a.enterprise_id})
    events = []
    with httpx.stream("GET", f"{live_server}/api/devices/{dev}/live", params={"heartbeat": 1},
                      headers=api.a.operator_headers, timeout=10) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        event: dict[str, str] = {}
        published = False
        for line in lines:
            if line.startswith(":"):
                events.append(("comment", line))
                if published:
                    break
                continue
            if line == "":
                if event:
                    events.append((event["event"], orjson.loads(event["data"])))
                    event = {}
                if events and events[-1][0] == "snapshot" and not published:
                    ent = api.a.enterprise_id
                    bus = api.app.state.events
                    bus.publish(f"telemetry.{ent}.{other}", {"device_id": other, "ts": T0, "values": {"x": 1}})
                    bus.publish(f"telemetry.{ent}.{dev}", {"device_id": dev, "ts": T0 + 1000,
                                                           "values": {"current_ka": 11.5}})
                    published = True
                continue
            name, _, value = line.partition(": ")
            event[name] = value
    # the page went away: its listener is removed (within a heartbeat or two)
    bus = api.app.state.events
    deadline = time.monotonic() + 5
    while any(listener.prefix.endswith(f".{dev}") for listener in bus._listeners):
        assert time.monotonic() < deadline, "the live stream's listener outlived its client"
        time.sleep(0.1)
    assert events[0] == ("snapshot", {"current_ka": {"ts": T0, "value": 11.0}})
    assert events[1] == ("telemetry", {"device_id": dev, "ts": T0 + 1000, "values": {"current_ka": 11.5}})
    assert events[2] == ("comment", ": heartbeat")


def test_retention_is_set_by_the_enterprise_admin_audited_and_isolated(api: ApiEnv) -> None:
    url = f"/api/enterprises/{api.a.enterprise_id}/telemetry-retention"
    assert api.client.get(url, headers=api.a.admin_headers).json()["days"] is None
    r = api.client.put(url, json={"days": 30}, headers=api.a.admin_headers)
    assert r.status_code == 200 and r.json()["days"] == 30
    assert api.client.get(url, headers=api.a.operator_headers).json()["days"] == 30
    assert api.client.put(url, json={"days": 7}, headers=api.a.operator_headers).status_code == 403
    assert api.client.put(url, json={"days": 0}, headers=api.a.admin_headers).status_code == 422
    for method in ("GET", "PUT"):
        r = api.client.request(method, url, json={"days": 1}, headers=api.b.admin_headers)
        assert r.status_code == 404, r.text
    assert api.client.get(url, headers=api.a.admin_headers).json()["days"] == 30
    with api.database.session() as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.entity_type == "telemetry_retention")
                          .order_by(AuditEvent.id.desc())).first()
        assert event is not None
        assert (event.enterprise_id, event.before, event.after) == (api.a.enterprise_id, {"days": None},
                                                                    {"days": 30})
    r = api.client.put(url, json={"days": None}, headers=api.a.admin_headers)
    assert r.json()["days"] is None
