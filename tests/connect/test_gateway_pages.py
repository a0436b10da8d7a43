"""The connectors page: lists the tenant's connectors with their status, adds one through the
form (errors shown next to the field), starts/stops and deletes; other tenants see nothing."""

from __future__ import annotations

import json
import re

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from tests.connect.builders import Actor, make_actor
from tests.connect.gateway_builders import make_connector, make_device

from ecoplat.connect.gateways.models import ConnectorConfig


def _sign_in(client: TestClient, actor: Actor) -> None:
    client.cookies.set("ecoplat_access", actor.token)


def test_page_lists_connectors_with_status_and_error(client: TestClient, db: Session) -> None:
    admin = make_actor(db)
    device = make_device(db, admin.enterprise_id, name="Tank farm PLC")
    row = make_connector(db, admin.enterprise_id, device_id=device.id, name="Tank Modbus")
    row.status, row.last_error = "unavailable", "ConnectionError: cannot connect to Modbus server 10.0.0.9:502"
    db.flush()
    other = make_connector(db, make_actor(db).enterprise_id, name="Someone else's")
    _sign_in(client, admin)
    r = client.get("/connectors")
    assert r.status_code == 200, r.text
    assert "Tank Modbus" in r.text and "Tank farm PLC" in r.text
    assert 'data-state="unavailable"' in r.text and "10.0.0.9:502" in r.text
    assert other.name not in r.text
    assert 'href="/connectors"' in r.text  # in the navigation
    rows = client.get(f"/connectors/rows?device_id={device.id}")
    assert rows.status_code == 200 and "Tank Modbus" in rows.text


def test_form_creates_a_connector_and_start_stop_delete_work(client: TestClient, db: Session) -> None:
    admin = make_actor(db)
    device = make_device(db, admin.enterprise_id)
    _sign_in(client, admin)
    config = {"host": "10.1.2.3", "registers": [{"key": "level_pct", "address": 7, "data_type": "int16", "scale": 0.1}]}
    r = client.post("/connectors", data={"name": "Level PLC", "device_id": str(device.id), "type": "modbus",
                                         "config": json.dumps(config), "enabled": "on"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    row = db.scalar(select(ConnectorConfig).where(ConnectorConfig.name == "Level PLC"))
    assert row is not None and row.enabled and row.config["registers"][0]["scale"] == 0.1
    assert client.post(f"/connectors/{row.id}/stop", follow_redirects=False).status_code == 303
    db.refresh(row)
    assert row.enabled is False
    assert client.post(f"/connectors/{row.id}/start", follow_redirects=False).status_code == 303
    db.refresh(row)
    assert row.enabled is True
    assert client.post(f"/connectors/{row.id}/delete", follow_redirects=False).status_code == 303
    assert db.scalar(select(ConnectorConfig.id).where(ConnectorConfig.id == row.id)) is None


def test_form_errors_are_shown_next_to_the_field(client: TestClient, db: Session) -> None:
    admin = make_actor(db)
    device = make_device(db, admin.enterprise_id)
    _sign_in(client, admin)
    r = client.post("/connectors", data={"name": "Bad", "device_id": str(device.id), "type": "modbus",
                                         "config": "{not json"})
    assert r.status_code == 422
    assert re.search(r'id="e-config"[^>]*>Not valid JSON', r.text)
    r = client.post("/connectors", data={"name": "Bad", "device_id": str(device.id), "type": "modbus",
                                         "config": json.dumps({"host": "x", "registers": [{"key": "k", "address": -1}]})})
    assert r.status_code == 422 and "config.registers.0.address" in r.text
    assert "{not json" not in r.text  # the form shows what was last sent
    assert db.scalar(select(ConnectorConfig).where(ConnectorConfig.name == "Bad")) is None


def test_another_tenant_cannot_act_on_a_connector(client: TestClient, db: Session) -> None:
    row = make_connector(db, make_actor(db).enterprise_id, enabled=True)
    _sign_in(client, make_actor(db))
    r = client.post(f"/connectors/{row.id}/stop", follow_redirects=False)
    assert r.status_code == 404
    db.refresh(row)
    assert row.enabled is True


def test_device_page_links_to_its_connectors(client: TestClient, db: Session) -> None:
    admin = make_actor(db)
    device = make_device(db, admin.enterprise_id)
    _sign_in(client, admin)
    r = client.get(f"/devices/{device.id}")
    assert r.status_code == 200, r.text
    assert f'href="/connectors?device_id={device.id}"' in r.text


def test_page_renders_in_chinese(client: TestClient, db: Session) -> None:
    admin = make_actor(db)
    make_connector(db, admin.enterprise_id, name="液氯罐区 PLC")
    _sign_in(client, admin)
    client.cookies.set("ecoplat_locale", "zh-CN")
    r = client.get("/connectors", headers={"accept-language": "zh-CN"})
    assert r.status_code == 200 and 'lang="zh-CN"' in r.text and "液氯罐区 PLC" in r.text
