"""The connectors API: CRUD with validation and audit, tenant isolation, start/stop, status, and
the OPC UA browse / Modbus test read against real servers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from tests.conftest import free_port
from tests.connect.builders import Actor, make_actor
from tests.connect.gateway_builders import make_connector, make_device
from tests.connect.gateway_servers import (
    MODBUS_EXPECTED,
    ModbusTestServer,
    OpcUaTestServer,
    modbus_register_config,
    shared_opcua_server,
)

from ecoplat.connect.gateways.models import ConnectorConfig
from ecoplat.tenancy.models import AuditEvent, Role


@pytest.fixture(scope="module")
def opcua_server() -> OpcUaTestServer:
    return shared_opcua_server()


@pytest.fixture(scope="module")
def modbus_server() -> Iterator[ModbusTestServer]:
    server = ModbusTestServer(free_port())
    server.start()
    yield server
    server.close()


@pytest.fixture
def admin(db: Session) -> Actor:
    return make_actor(db)


def _modbus_body(device_id: int, **extra: Any) -> dict[str, Any]:
    return {"name": "Tank farm PLC", "device_id": device_id, "type": "modbus",
            "config": {"host": "192.168.10.20", "unit_id": 3,
                       "registers": [{"key": "level_pct", "table": "input", "address": 4, "data_type": "float32",
                                      "byte_order": "CDAB"}]},
            **extra}


def _audit(db: Session, entity_id: int) -> list[AuditEvent]:
    return list(db.scalars(select(AuditEvent).where(AuditEvent.entity_type == "connector",
                                                    AuditEvent.entity_id == str(entity_id))
                           .order_by(AuditEvent.id)).all())


def test_create_read_update_delete_with_audit(client: TestClient, db: Session, admin: Actor) -> None:
    device = make_device(db, admin.enterprise_id)
    r = client.post("/api/connectors", json=_modbus_body(device.id), headers=admin.headers)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["enterprise_id"] == admin.enterprise_id and body["device_id"] == device.id
    assert body["status"] == "stopped" and body["enabled"] is True
    # Defaults are filled in, so what is stored is what runs.
    assert body["config"]["port"] == 502 and body["config"]["poll_interval_ms"] == 1000
    assert body["config"]["registers"][0] == {"key": "level_pct", "table": "input", "address": 4,
                                              "data_type": "float32", "byte_order": "CDAB", "scale": 1.0,
                                              "offset": 0.0, "bit": None}
    cid = body["id"]

    assert client.get(f"/api/connectors/{cid}", headers=admin.headers).json()["name"] == "Tank farm PLC"
    listed = client.get("/api/connectors", params={"device_id": device.id}, headers=admin.headers).json()
    assert [c["id"] for c in listed["items"]] == [cid]

    new_config = dict(body["config"], poll_interval_ms=250)
    r = client.patch(f"/api/connectors/{cid}", json={"config": new_config, "name": "Tank PLC"}, headers=admin.headers)
    assert r.status_code == 200, r.text
    assert r.json()["config"]["poll_interval_ms"] == 250 and r.json()["name"] == "Tank PLC"

    assert client.delete(f"/api/connectors/{cid}", headers=admin.headers).status_code == 204
    assert client.get(f"/api/connectors/{cid}", headers=admin.headers).status_code == 404

    events = _audit(db, cid)
    assert [e.action for e in events] == ["create", "update", "delete"]
    assert events[0].after["type"] == "modbus" and events[0].actor_user_id == admin.user_id
    assert events[1].before["config"]["poll_interval_ms"] == 1000
    assert events[1].after["config"]["poll_interval_ms"] == 250
    assert events[2].before["name"] == "Tank PLC" and events[2].after is None


@pytest.mark.parametrize(("patch", "field"), [
    ({"type": "profibus"}, "type"),
    ({"config": {"host": "plc", "registers": [{"key": "x", "address": 1, "data_type": "float128"}]}},
     "config.registers.0.data_type"),
    ({"config": {"host": "plc", "registers": [{"key": "x", "table": "coil", "address": 1, "data_type": "int16"}]}},
     "config.registers.0"),
    ({"config": {"registers": [{"key": "x", "address": 1}]}}, "config.host"),
    ({"config": {"host": "plc", "registers": [{"key": "x", "address": 1}], "surprise": 1}}, "config.surprise"),
])
def test_invalid_configuration_is_422_naming_the_field(client: TestClient, db: Session, admin: Actor,
                                                        patch: dict[str, Any], field: str) -> None:
    device = make_device(db, admin.enterprise_id)
    r = client.post("/api/connectors", json=_modbus_body(device.id) | patch, headers=admin.headers)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["errors"][0]["field"] == field
    assert db.scalar(select(ConnectorConfig).where(ConnectorConfig.device_id == device.id)) is None


def test_opcua_endpoint_and_node_ids_are_validated(client: TestClient, db: Session, admin: Actor) -> None:
    device = make_device(db, admin.enterprise_id)
    body = {"name": "UA", "device_id": device.id, "type": "opcua",
            "config": {"endpoint": "http://plc:4840", "nodes": [{"node_id": "ns=2;s=A", "key": "a"}]}}
    r = client.post("/api/connectors", json=body, headers=admin.headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "config.endpoint"
    body["config"] = {"endpoint": "opc.tcp://plc:4840", "nodes": [{"node_id": "not a node", "key": "a"}]}
    r = client.post("/api/connectors", json=body, headers=admin.headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "config.nodes.0.node_id"


def test_duplicate_name_is_409(client: TestClient, db: Session, admin: Actor) -> None:
    device = make_device(db, admin.enterprise_id)
    assert client.post("/api/connectors", json=_modbus_body(device.id), headers=admin.headers).status_code == 201
    r = client.post("/api/connectors", json=_modbus_body(device.id), headers=admin.headers)
    assert r.status_code == 409 and "Tank farm PLC" in r.json()["detail"]


def test_password_is_never_shown_and_the_mask_keeps_it(client: TestClient, db: Session, admin: Actor) -> None:
    device = make_device(db, admin.enterprise_id)
    body = {"name": "UA", "device_id": device.id, "type": "opcua",
            "config": {"endpoint": "opc.tcp://plc:4840", "username": "ops", "password": "s3cret",
                       "nodes": [{"node_id": "ns=2;s=A", "key": "a"}]}}
    r = client.post("/api/connectors", json=body, headers=admin.headers)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["config"]["password"] == "********" and "s3cret" not in r.text
    r = client.patch(f"/api/connectors/{out['id']}", json={"config": dict(out["config"], publishing_interval_ms=200)},
                     headers=admin.headers)
    assert r.status_code == 200, r.text
    row = db.get(ConnectorConfig, out["id"])
    db.refresh(row)
    assert row.config["password"] == "s3cret" and row.config["publishing_interval_ms"] == 200
    assert all("s3cret" not in str(e.after) + str(e.before) for e in _audit(db, out["id"]))


def test_start_and_stop_set_enabled_and_are_audited(client: TestClient, db: Session, admin: Actor) -> None:
    row = make_connector(db, admin.enterprise_id, enabled=False)
    r = client.post(f"/api/connectors/{row.id}/start", headers=admin.headers)
    assert r.status_code == 200 and r.json()["enabled"] is True
    r = client.post(f"/api/connectors/{row.id}/stop", headers=admin.headers)
    assert r.status_code == 200 and r.json()["enabled"] is False
    assert [(e.before["enabled"], e.after["enabled"]) for e in _audit(db, row.id)] == [(False, True), (True, False)]
    status = client.get(f"/api/connectors/{row.id}/status", headers=admin.headers).json()
    assert status["running"] is False and status["state"] == "stopped"


def test_another_tenant_gets_404_everywhere(client: TestClient, db: Session, admin: Actor) -> None:
    other = make_actor(db)
    row = make_connector(db, admin.enterprise_id)
    for method, path, body in [
        ("GET", f"/api/connectors/{row.id}", None),
        ("PATCH", f"/api/connectors/{row.id}", {"name": "mine now"}),
        ("DELETE", f"/api/connectors/{row.id}", None),
        ("POST", f"/api/connectors/{row.id}/start", None),
        ("POST", f"/api/connectors/{row.id}/stop", None),
        ("GET", f"/api/connectors/{row.id}/status", None),
    ]:
        r = client.request(method, path, json=body, headers=other.headers)
        assert r.status_code == 404, (method, path, r.text)
    assert client.get("/api/connectors", headers=other.headers).json()["items"] == []
    # Nor can it attach a connector to the first tenant's device.
    r = client.post("/api/connectors", json=_modbus_body(row.device_id), headers=other.headers)
    assert r.status_code == 404
    db.refresh(row)
    assert row.name.startswith("conn ") and row.enabled is False


def test_operator_may_read_but_not_configure(client: TestClient, db: Session, admin: Actor) -> None:
    operator = make_actor(db, enterprise_id=admin.enterprise_id, role=Role.operator)
    row = make_connector(db, admin.enterprise_id)
    assert client.get(f"/api/connectors/{row.id}", headers=operator.headers).status_code == 200
    r = client.post("/api/connectors", json=_modbus_body(row.device_id), headers=operator.headers)
    assert r.status_code == 403
    assert client.post(f"/api/connectors/{row.id}/start", headers=operator.headers).status_code == 403


def test_types_lists_both_connectors_with_their_schema(client: TestClient, admin: Actor) -> None:
    r = client.get("/api/connectors/types", headers=admin.headers)
    types = {t["type"]: t for t in r.json()}
    assert set(types) >= {"opcua", "modbus"}
    assert "registers" in types["modbus"]["config_schema"]["properties"]
    assert "endpoint" in types["opcua"]["config_schema"]["properties"]


def test_browse_a_real_opcua_server(client: TestClient, admin: Actor, opcua_server: OpcUaTestServer) -> None:
    r = client.post("/api/connectors/opcua/browse", json={"endpoint": opcua_server.endpoint, "node_id": "ns=2;s=E101"},
                    headers=admin.headers)
    assert r.status_code == 200, r.text
    children = {c["node_id"]: c for c in r.json()["children"]}
    assert children["ns=2;s=E101.Current"] | {} == {
        "node_id": "ns=2;s=E101.Current", "browse_name": "2:Current", "display_name": "Current",
        "node_class": "Variable", "data_type": "Float", "value": 14.5}
    r = client.post("/api/connectors/opcua/browse", json={"endpoint": opcua_server.endpoint},
                    headers=admin.headers)
    assert any(c["node_id"] == "ns=2;s=E101" for c in r.json()["children"])


def test_browse_errors_are_problems(client: TestClient, admin: Actor, opcua_server: OpcUaTestServer) -> None:
    r = client.post("/api/connectors/opcua/browse", json={"endpoint": f"opc.tcp://127.0.0.1:{free_port()}/",
                                                          "timeout_s": 2}, headers=admin.headers)
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    assert "Could not browse" in r.json()["detail"] and r.json()["errors"][0]["field"] == "endpoint"
    assert r.json()["type"].endswith("/equipment-unreachable")
    r = client.post("/api/connectors/opcua/browse", json={"endpoint": opcua_server.endpoint, "node_id": "ns=2;s=Nope"},
                    headers=admin.headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "node_id"
    r = client.post("/api/connectors/opcua/browse", json={"endpoint": opcua_server.endpoint, "node_id": "??"},
                    headers=admin.headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "node_id"


def test_modbus_test_read_against_a_real_server(client: TestClient, admin: Actor,
                                                modbus_server: ModbusTestServer) -> None:
    config = {"host": "127.0.0.1", "port": modbus_server.port, "timeout_s": 1, "registers": modbus_register_config()}
    r = client.post("/api/connectors/modbus/test-read", json=config, headers=admin.headers)
    assert r.status_code == 200, r.text
    assert {row["key"]: row["value"] for row in r.json()["rows"]} == MODBUS_EXPECTED
    r = client.post("/api/connectors/modbus/test-read", json=config | {"port": free_port()}, headers=admin.headers)
    assert r.status_code == 422 and "Could not read" in r.json()["detail"]
    assert r.json()["errors"][0]["field"] == "host"
    r = client.post("/api/connectors/modbus/test-read", json=config | {"registers": []}, headers=admin.headers)
    assert r.status_code == 422
