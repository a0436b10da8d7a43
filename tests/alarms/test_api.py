"""The alarm API: rule CRUD with audit events and clear 422s, the life cycle through the API
with role checks, tenant isolation, KPIs and notification channels."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from ecoplat.alarms import service
from ecoplat.alarms.engine import ConditionChange
from ecoplat.alarms.models import Alarm
from ecoplat.tenancy.models import AuditEvent

from .builders import Plant, make_plant, make_rule


@pytest.fixture
def plant(db: Session) -> Plant:
    return make_plant(db, devices=("E-101", "E-102"))


@pytest.fixture
def other(db: Session) -> Plant:
    return make_plant(db, devices=("X-1",))


def _h(plant: Plant, role: str = "enterprise_admin") -> dict[str, str]:
    return plant.people[role].headers


def _raise_alarm(db: Session, plant: Plant, *, at: datetime | None = None, device: str = "E-101",
                 priority: int = 2, active: bool = True, rule_id: int | None = None) -> Alarm:
    if rule_id is None:
        rule_id = make_rule(db, plant.enterprise_id, device_id=plant.device_id(device), priority=priority).id
    at = at or datetime.now(UTC)
    change = ConditionChange(rule_id=rule_id, device_id=plant.device_id(device), enterprise_id=plant.enterprise_id,
                             active=active, at=int(at.timestamp() * 1000), value=91.5, limit=80.0,
                             priority=priority, message=f"{device} temp_c high", key="temp_c", kind="high",
                             site_id=plant.site_id)
    (alarm,) = service.apply_condition_changes(db, [change])
    return alarm


def _rule_body(plant: Plant, **kw: Any) -> dict[str, Any]:
    return {"name": "Cell temperature high", "kind": "high", "key": "temp_c",
            "params": {"limit": 85, "unit": "Cel"}, "priority": 2, "deadband": 1.5, "on_delay_s": 5,
            "off_delay_s": 10, "message_template": "{device} {key} {value} > {limit} {unit}",
            "device_id": plant.device_id("E-101")} | kw


def test_rule_crud_with_keyset_pages_and_audit_events(client: TestClient, db: Session, plant: Plant) -> None:
    ids = []
    for i in range(3):
        r = client.post("/api/alarm-rules", headers=_h(plant, "engineer"), json=_rule_body(plant, name=f"r{i}"))
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    r = client.get("/api/alarm-rules", headers=_h(plant, "operator"), params={"limit": 2})
    assert r.status_code == 200
    page1 = r.json()
    r = client.get("/api/alarm-rules", headers=_h(plant, "operator"),
                   params={"limit": 2, "cursor": page1["next_cursor"]})
    assert [x["id"] for x in page1["items"] + r.json()["items"]] == ids and r.json()["next_cursor"] is None

    r = client.patch(f"/api/alarm-rules/{ids[0]}", headers=_h(plant, "engineer"), json={"params": {"limit": 90}})
    assert r.status_code == 200 and r.json()["params"] == {"limit": 90}
    assert client.delete(f"/api/alarm-rules/{ids[1]}", headers=_h(plant, "engineer")).status_code == 204
    assert client.get(f"/api/alarm-rules/{ids[1]}", headers=_h(plant)).status_code == 404
    actions = [(e.action, e.entity_id) for e in db.scalars(
        select(AuditEvent).where(AuditEvent.entity_type == "alarm_rule").order_by(AuditEvent.id))]
    assert actions == [("create", str(ids[0])), ("create", str(ids[1])), ("create", str(ids[2])),
                       ("update", str(ids[0])), ("delete", str(ids[1]))]


def test_profile_rule_and_operator_cannot_configure(client: TestClient, plant: Plant) -> None:
    body = _rule_body(plant, device_id=None, profile_id=plant.profile_id)
    r = client.post("/api/alarm-rules", headers=_h(plant, "operator"), json=body)
    assert r.status_code == 403 and "alarms:configure" in r.json()["detail"]
    r = client.post("/api/alarm-rules", headers=_h(plant, "safety_officer"), json=body)
    assert r.status_code == 201 and r.json()["profile_id"] == plant.profile_id


@pytest.mark.parametrize("expression, words", [
    ("temp_c.__class__.__mro__", "attribute access"),
    ("__import__('os').system('true')", "attribute access"),
    ("__import__('os')", "Names starting with '_'"),
    ("(lambda: 1)()", "lambdas"),
    ("[t for t in range(10**9)]", "comprehensions"),
    ("open('/etc/passwd').read() == ''", "attribute access"),
    ("exec('1')", "Calling 'exec' is not allowed"),
    ("temp_c > 1 and " * 60 + "True", "at most 500"),
])
def test_expression_rule_rejects_unsafe_input_with_a_clear_422(client: TestClient, plant: Plant,
                                                               expression: str, words: str) -> None:
    r = client.post("/api/alarm-rules", headers=_h(plant, "engineer"),
                    json=_rule_body(plant, kind="expression", key="", params={"expression": expression}))
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert words in r.json()["detail"] and r.json()["detail"].startswith("params.expression")


def test_bad_rules_answer_422_naming_the_field(client: TestClient, plant: Plant) -> None:
    cases = [
        (_rule_body(plant, params={}), "params.limit"),
        (_rule_body(plant, priority=7), "priority"),
        (_rule_body(plant, message_template="{device.__init__}"), "message_template"),
        (_rule_body(plant, kind="rate_of_change", params={"limit": 1, "per": "hour"}), "params.per"),
        (_rule_body(plant, profile_id=plant.profile_id), "device_id"),
    ]
    for body, field in cases:
        r = client.post("/api/alarm-rules", headers=_h(plant, "engineer"), json=body)
        assert r.status_code == 422, (body, r.text)
        assert field in r.text, (field, r.text)


def test_rules_on_another_tenants_device_or_profile_answer_404(client: TestClient, plant: Plant,
                                                               other: Plant) -> None:
    r = client.post("/api/alarm-rules", headers=_h(plant, "engineer"),
                    json=_rule_body(plant, device_id=other.device_id("X-1")))
    assert r.status_code == 404
    r = client.post("/api/alarm-rules", headers=_h(plant, "engineer"),
                    json=_rule_body(plant, device_id=None, profile_id=other.profile_id))
    assert r.status_code == 404


def test_ack_shelve_comment_with_role_checks_and_transitions(client: TestClient, db: Session, plant: Plant) -> None:
    alarm = _raise_alarm(db, plant)
    url = f"/api/alarms/{alarm.id}"
    assert client.post(f"{url}/ack", headers=_h(plant, "customer")).status_code == 403
    assert client.post(f"{url}/shelve", headers=_h(plant, "operator"),
                       json={"minutes": 30, "reason": "maintenance"}).status_code == 403
    r = client.post(f"{url}/ack", headers=_h(plant, "operator"), json={"note": "on it"})
    assert r.status_code == 200 and r.json()["state"] == "acknowledged"
    assert r.json()["acked_by"] == plant.people["operator"].user_id
    assert client.post(f"{url}/ack", headers=_h(plant, "operator")).status_code == 409
    r = client.post(f"{url}/comment", headers=_h(plant, "operator"), json={"text": "valve V-3 stuck"})
    assert r.status_code == 201
    assert client.post(f"{url}/comment", headers=_h(plant, "customer"), json={"text": "x"}).status_code == 403

    r = client.post(f"{url}/shelve", headers=_h(plant, "safety_officer"), json={"minutes": 30, "reason": "maintenance"})
    assert r.status_code == 200 and r.json()["state"] == "shelved" and r.json()["shelve_reason"] == "maintenance"
    until = datetime.fromisoformat(r.json()["shelved_until"])
    assert timedelta(minutes=29) < until - datetime.now(UTC) <= timedelta(minutes=30)
    r = client.post(f"{url}/shelve", headers=_h(plant, "safety_officer"), json={"reason": "no expiry"})
    assert r.status_code == 422
    r = client.post(f"{url}/unshelve", headers=_h(plant, "safety_officer"), json={"note": "done"})
    assert r.status_code == 200 and r.json()["state"] == "acknowledged"

    r = client.get(f"{url}/transitions", headers=_h(plant, "operator"))
    assert [(t["action"], t["to_state"], t["user_id"]) for t in r.json()] == [
        ("alarm", "unacknowledged", None),
        ("acknowledge", "acknowledged", plant.people["operator"].user_id),
        ("shelve", "shelved", plant.people["safety_officer"].user_id),
        ("unshelve", "acknowledged", plant.people["safety_officer"].user_id)]
    assert r.json()[1]["note"] == "on it"
    comments = client.get(f"{url}/comments", headers=_h(plant, "operator")).json()
    assert [c["text"] for c in comments] == ["valve V-3 stuck"]
    audited = [e.action for e in db.scalars(select(AuditEvent).where(AuditEvent.entity_type == "alarm")
                                            .order_by(AuditEvent.id))]
    assert audited == ["acknowledge", "comment", "shelve", "unshelve"]


def test_out_of_service_and_suppression_by_design(client: TestClient, db: Session, plant: Plant) -> None:
    alarm = _raise_alarm(db, plant)
    url = f"/api/alarms/{alarm.id}"
    assert client.post(f"{url}/out-of-service", headers=_h(plant, "operator")).status_code == 403
    r = client.post(f"{url}/out-of-service", headers=_h(plant, "safety_officer"), json={"note": "sensor swap"})
    assert r.json()["state"] == "out_of_service"
    r = client.post(f"{url}/return-to-service", headers=_h(plant, "safety_officer"))
    assert r.json()["state"] == "unacknowledged"
    r = client.post(f"{url}/suppress", headers=_h(plant, "safety_officer"), json={"note": "unit shut down"})
    assert r.json()["state"] == "suppressed"
    assert client.post(f"{url}/ack", headers=_h(plant, "operator")).status_code == 409


def test_alarm_list_filters_and_tenant_isolation(client: TestClient, db: Session, plant: Plant, other: Plant) -> None:
    a1 = _raise_alarm(db, plant, priority=1)
    a2 = _raise_alarm(db, plant, device="E-102", priority=3)
    x = _raise_alarm(db, other, device="X-1")
    r = client.get("/api/alarms", headers=_h(plant, "operator"))
    assert [a["id"] for a in r.json()["items"]] == [a2.id, a1.id]  # newest first
    r = client.get("/api/alarms", headers=_h(plant, "operator"), params={"priority": [1]})
    assert [a["id"] for a in r.json()["items"]] == [a1.id]
    r = client.get("/api/alarms", headers=_h(plant), params={"device_id": plant.device_id("E-102"),
                                                           "state": ["unacknowledged"], "site_id": plant.site_id})
    assert [a["id"] for a in r.json()["items"]] == [a2.id]
    r = client.get("/api/alarms", headers=_h(plant), params={"state": ["normal"]})
    assert r.json()["items"] == []
    # Another tenant's alarm answers 404 on every route, and never appears in a list.
    for method, path, body in [("get", f"/api/alarms/{x.id}", None), ("post", f"/api/alarms/{x.id}/ack", {}),
                               ("post", f"/api/alarms/{x.id}/shelve", {"minutes": 5, "reason": "r"}),
                               ("post", f"/api/alarms/{x.id}/comment", {"text": "t"}),
                               ("get", f"/api/alarms/{x.id}/transitions", None)]:
        r = client.request(method.upper(), path, headers=_h(plant), json=body)
        assert r.status_code == 404, (path, r.text)
    assert client.get(f"/api/alarm-rules/{x.rule_id}", headers=_h(plant)).status_code == 404
    assert client.get("/api/alarms/unacknowledged-count", headers=_h(plant)).json() == {"count": 2}


def test_kpis_count_floods_chattering_and_priorities(client: TestClient, db: Session, plant: Plant) -> None:
    t0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
    rule = make_rule(db, plant.enterprise_id, device_id=plant.device_id("E-101"), priority=4)
    # A chattering alarm: 12 annunciations 5 s apart (alarm, clear, alarm …), all within one 10-min interval.
    for i in range(12):
        _raise_alarm(db, plant, at=t0 + timedelta(seconds=10 * i), rule_id=rule.id, priority=4)
        _raise_alarm(db, plant, at=t0 + timedelta(seconds=10 * i + 5), rule_id=rule.id, priority=4, active=False)
    _raise_alarm(db, plant, at=t0 + timedelta(minutes=25), device="E-102", priority=1)
    r = client.get("/api/alarms/kpis", headers=_h(plant, "operator"),
                   params={"start": t0.isoformat(), "end": (t0 + timedelta(hours=1)).isoformat()})
    assert r.status_code == 200, r.text
    k = r.json()
    assert k["annunciations"] == 13 and k["peak_alarms_per_10min"] == 12
    assert [s["count"] for s in k["rate_series"]] == [12, 0, 1, 0, 0, 0]
    assert len(k["floods"]) == 1 and k["flood_time_pct"] == pytest.approx(100 / 6, abs=0.01)
    assert k["chattering"][0]["rule_id"] == rule.id and k["chattering"][0]["max_in_60s"] == 6
    assert k["top10"][0] == {"rule_id": rule.id, "device_id": plant.device_id("E-101"),
                             "label": "E-101 temp_c high", "count": 12}
    assert k["priority_distribution"] == {"urgent": 1, "high": 0, "medium": 0, "low": 12}
    assert k["alarms_per_operator_per_10min"] == pytest.approx(13 / 6, abs=0.001)
    r = client.get("/api/alarms/kpis", headers=_h(plant), params={"start": t0.isoformat(), "end": t0.isoformat()})
    assert r.status_code == 422


def test_notification_channels_hide_secrets_and_are_scoped(client: TestClient, plant: Plant, other: Plant) -> None:
    body = {"name": "Control room", "kind": "webhook",
            "config": {"url": "http://127.0.0.1:9/hook", "secret": "s3cr3t-value"}}
    r = client.post("/api/notification-channels", headers=_h(plant, "engineer"), json=body)
    assert r.status_code == 201, r.text
    ch = r.json()
    assert ch["config"]["secret"] == "***" and "s3cr3t" not in r.text
    r = client.post("/api/notification-channels", headers=_h(plant, "engineer"),
                    json={"name": "Mail", "kind": "email", "config": {"to": ["not-an-email"], "smtp_host": "x",
                                                                       "from_address": "a@b.cn"}})
    assert r.status_code == 422
    r = client.patch(f"/api/notification-channels/{ch['id']}", headers=_h(plant, "engineer"),
                     json={"config": {"url": "http://127.0.0.1:10/hook", "secret": "***"}})
    assert r.status_code == 200 and r.json()["config"]["url"] == "http://127.0.0.1:10/hook"
    assert client.get(f"/api/notification-channels/{ch['id']}", headers=_h(other)).status_code == 404
    assert client.get("/api/notification-channels", headers=_h(other)).json()["items"] == []
    assert client.delete(f"/api/notification-channels/{ch['id']}", headers=_h(plant, "engineer")).status_code == 204


def test_rules_from_profile_templates_are_created_once(client: TestClient, db: Session, plant: Plant) -> None:
    from ecoplat.connect.models import DeviceProfile

    profile = db.get(DeviceProfile, plant.profile_id)
    assert profile is not None
    profile.default_rules = [
        {"name": "Cell voltage high", "kind": "high", "key": "cell_voltage_v", "params": {"limit": 3.45, "unit": "V"},
         "priority": 2, "deadband": 0.02, "on_delay_s": 10},
        {"name": "Broken template", "kind": "high", "key": "x", "params": {}},
    ]
    db.flush()
    r = client.post(f"/api/alarm-rules/from-profile/{plant.profile_id}", headers=_h(plant, "engineer"))
    assert r.status_code == 201, r.text
    assert [(x["name"], x["profile_id"], x["on_delay_s"]) for x in r.json()] == [
        ("Cell voltage high", plant.profile_id, 10.0)]
    r = client.post(f"/api/alarm-rules/from-profile/{plant.profile_id}", headers=_h(plant, "engineer"))
    assert r.json() == []


def test_deleting_a_rule_closes_its_open_alarms_on_the_record(client: TestClient, db: Session, plant: Plant) -> None:
    alarm = _raise_alarm(db, plant)
    assert client.delete(f"/api/alarm-rules/{alarm.rule_id}", headers=_h(plant, "engineer")).status_code == 204
    r = client.get(f"/api/alarms/{alarm.id}", headers=_h(plant, "operator"))
    assert r.json()["state"] == "normal" and r.json()["closed_at"] is not None and r.json()["rule_id"] is None
    transitions = client.get(f"/api/alarms/{alarm.id}/transitions", headers=_h(plant, "operator")).json()
    assert transitions[-1]["action"] == "rule_deleted"
    assert transitions[-1]["user_id"] == plant.people["engineer"].user_id


def test_disabling_a_rule_takes_its_alarms_out_of_service_and_enabling_returns_them(
        client: TestClient, db: Session, plant: Plant) -> None:
    alarm = _raise_alarm(db, plant)
    r = client.patch(f"/api/alarm-rules/{alarm.rule_id}", headers=_h(plant, "engineer"), json={"enabled": False})
    assert r.status_code == 200
    assert client.get(f"/api/alarms/{alarm.id}", headers=_h(plant)).json()["state"] == "out_of_service"
    client.patch(f"/api/alarm-rules/{alarm.rule_id}", headers=_h(plant, "engineer"), json={"enabled": True})
    assert client.get(f"/api/alarms/{alarm.id}", headers=_h(plant)).json()["state"] == "unacknowledged"
    actions = [t["action"] for t in client.get(f"/api/alarms/{alarm.id}/transitions", headers=_h(plant)).json()]
    assert actions == ["alarm", "remove_from_service", "return_to_service"]
