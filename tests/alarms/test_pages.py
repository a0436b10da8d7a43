"""Alarm pages through HTTP: the console with filters and HTMX ack/shelve, the banner on every
page, the KPI page's charts, the SSE stream of alarm events."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from ecoplat.alarms import service
from ecoplat.alarms.engine import ConditionChange

from .builders import Plant, make_plant, make_rule


@pytest.fixture
def plant(db: Session) -> Plant:
    return make_plant(db, devices=("E-101", "E-102"))


def _alarm(db: Session, plant: Plant, device: str = "E-101", priority: int = 2, message: str = "") -> int:
    rule = make_rule(db, plant.enterprise_id, device_id=plant.device_id(device), priority=priority)
    change = ConditionChange(rule_id=rule.id, device_id=plant.device_id(device), enterprise_id=plant.enterprise_id,
                             active=True, at=int(datetime.now(UTC).timestamp() * 1000), value=91.5, limit=80.0,
                             priority=priority, message=message or f"{device} cell temperature high",
                             key="temp_c", kind="high", site_id=plant.site_id)
    return service.apply_condition_changes(db, [change])[0].id


def _login(client: TestClient, plant: Plant, role: str) -> None:
    client.cookies.set("ecoplat_access", plant.people[role].token)


def test_console_lists_open_alarms_with_filters_and_site_time(client: TestClient, db: Session, plant: Plant) -> None:
    a1 = _alarm(db, plant, priority=1, message="E-101 chlorine 4 ppm")
    a2 = _alarm(db, plant, device="E-102", priority=4, message="E-102 level low")
    _login(client, plant, "operator")
    r = client.get("/alarms")
    assert r.status_code == 200
    assert f'id="alarm-{a1}"' in r.text and f'id="alarm-{a2}"' in r.text
    assert 'data-stream="/alarms/stream"' in r.text and "(Asia/Shanghai)" in r.text
    assert 'data-action="ack"' in r.text and 'data-action="shelve"' not in r.text  # operators cannot shelve
    r = client.get("/alarms", params={"priority": 1})
    assert f'id="alarm-{a1}"' in r.text and f'id="alarm-{a2}"' not in r.text
    r = client.get("/alarms/rows", params={"state": "acknowledged"})
    assert "No alarms match" in r.text


def test_ack_and_shelve_from_the_page_return_the_updated_row(client: TestClient, db: Session, plant: Plant) -> None:
    alarm_id = _alarm(db, plant)
    _login(client, plant, "safety_officer")
    r = client.post(f"/alarms/{alarm_id}/ack", headers={"HX-Request": "true"})
    assert r.status_code == 200 and 'data-state="acknowledged"' in r.text and "<html" not in r.text
    r = client.post(f"/alarms/{alarm_id}/shelve", data={"minutes": "60", "reason": "maintenance"})
    assert r.status_code == 200 and 'data-state="shelved"' in r.text and 'data-action="unshelve"' in r.text
    r = client.post(f"/alarms/{alarm_id}/unshelve")
    assert 'data-state="acknowledged"' in r.text
    _login(client, plant, "customer")
    assert client.post(f"/alarms/{alarm_id}/ack").status_code == 403


def test_banner_counts_unacknowledged_alarms_on_every_page(client: TestClient, db: Session, plant: Plant) -> None:
    _alarm(db, plant)
    _alarm(db, plant, device="E-102")
    _login(client, plant, "operator")
    for path in ("/alarms/kpis", f"/enterprises/{plant.enterprise_id}"):
        r = client.get(path)
        assert r.status_code == 200, path
        assert 'id="alarm-banner" data-count="2"' in r.text and "2 unacknowledged alarms" in r.text
    # What a page refreshing its banners gets: the banners alone, not a page.
    r = client.get("/banners")
    assert r.status_code == 200 and 'id="alarm-banner" data-count="2"' in r.text and "<html" not in r.text
    client.cookies.set("ecoplat_locale", "zh-CN")
    r = client.get("/alarms")
    assert r.status_code == 200 and 'lang="zh-CN"' in r.text


def test_kpi_page_draws_rate_priority_and_top10_charts(client: TestClient, db: Session, plant: Plant) -> None:
    for _ in range(3):
        _alarm(db, plant, priority=3)
    _login(client, plant, "operator")
    r = client.get("/alarms/kpis")
    assert r.status_code == 200
    assert 'data-kpi="annunciations">3<' in r.text
    option = json.loads(r.text.split('id="chart-rate-option">', 1)[1].split("</script>", 1)[0])
    marks = [d["yAxis"] for d in option["series"][0]["markLine"]["data"]]
    assert marks == [1, 2, 10]
    pie = json.loads(r.text.split('id="chart-priority-option">', 1)[1].split("</script>", 1)[0])
    assert {d["name"]: d["value"] for d in pie["series"][0]["data"]}["Medium"] == 3


def test_console_shows_in_app_notifications(client: TestClient, db: Session, plant: Plant) -> None:
    from ecoplat.alarms.models import InAppNotification

    db.add(InAppNotification(enterprise_id=plant.enterprise_id, priority=1, title="[URGENT] alarm: E-101 chlorine 4 ppm",
                             body="E-101 chlorine 4 ppm"))
    db.flush()
    _login(client, plant, "operator")
    r = client.get("/alarms")
    assert "[URGENT] alarm: E-101 chlorine 4 ppm" in r.text.split('id="in-app-notifications"', 1)[1]
