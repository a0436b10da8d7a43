"""Device profiles and devices through the API: CRUD, pages and filters, tokens, attributes,
audit events and tenant isolation."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from tests.connect.builders import make_actor, make_equipment

from ecoplat.connect.ingest import hash_token
from ecoplat.connect.models import Device
from ecoplat.db import utcnow
from ecoplat.tenancy.models import AuditEvent, Role

PROFILE = {
    "name": "Membrane electrolyzer",
    "telemetry_keys": [
        {"key": "current_ka", "unit": "kA", "min": 0, "max": 20, "chart": "line"},
        {"key": "cell_voltage_v", "unit": "V", "min": 2.5, "max": 3.6, "chart": "gauge"},
    ],
    "inactivity_timeout_s": 120,
}


def test_profile_crud_and_validation(client, db: Session):
    admin = make_actor(db)
    r = client.post("/api/device-profiles", json=PROFILE, headers=admin.headers)
    assert r.status_code == 201, r.text
    profile = r.json()
    assert profile["telemetry_keys"][1]["chart"] == "gauge" and profile["enterprise_id"] == admin.enterprise_id

    dup = client.post("/api/device-profiles", json=PROFILE, headers=admin.headers)
    assert dup.status_code == 409 and dup.headers["content-type"] == "application/problem+json"

    bad = client.post("/api/device-profiles", json={**PROFILE, "name": "x",
                                                    "telemetry_keys": [{"key": "t", "min": 5, "max": 1}]},
                      headers=admin.headers)
    assert bad.status_code == 422 and "min" in bad.json()["detail"]
    bad_unit = client.post("/api/device-profiles", json={"name": "y", "telemetry_keys": [{"key": "t", "unit": "deg C"}]},
                           headers=admin.headers)
    assert bad_unit.status_code == 422

    r = client.patch(f"/api/device-profiles/{profile['id']}", json={"inactivity_timeout_s": 300},
                     headers=admin.headers)
    assert r.status_code == 200 and r.json()["inactivity_timeout_s"] == 300
    assert client.get("/api/device-profiles", headers=admin.headers).json()["items"][0]["id"] == profile["id"]
    assert client.delete(f"/api/device-profiles/{profile['id']}", headers=admin.headers).status_code == 204
    assert client.get(f"/api/device-profiles/{profile['id']}", headers=admin.headers).status_code == 404


def test_device_crud_shows_the_token_once_and_audits_every_write(client, db: Session):
    admin = make_actor(db)
    eq = make_equipment(db, admin.enterprise_id)
    profile = client.post("/api/device-profiles", json=PROFILE, headers=admin.headers).json()
    r = client.post("/api/devices", json={"name": "E-101 rectifier", "type": "electrolyzer",
                                          "profile_id": profile["id"], "equipment_id": eq.id},
                    headers=admin.headers)
    assert r.status_code == 201, r.text
    created = r.json()
    token = created["access_token"]
    assert len(token) >= 20 and created["token_prefix"] == token[:6]
    assert created["status"] == "offline" and created["last_seen_at"] is None

    got = client.get(f"/api/devices/{created['id']}", headers=admin.headers).json()
    assert "access_token" not in got and got["equipment_id"] == eq.id
    row = db.get(Device, created["id"])
    assert row is not None and row.token_hash == hash_token(token) and token not in str(vars(row))

    creds = client.get(f"/api/devices/{created['id']}/credentials", headers=admin.headers).json()
    assert creds == {"device_id": created["id"], "credentials_type": "ACCESS_TOKEN",
                     "token_prefix": token[:6], "revoked": False}

    assert client.post("/api/devices", json={"name": "E-101 rectifier"}, headers=admin.headers).status_code == 409
    r = client.patch(f"/api/devices/{created['id']}", json={"label": "Rectifier of cell room 1"},
                     headers=admin.headers)
    assert r.status_code == 200 and r.json()["label"] == "Rectifier of cell room 1"
    assert client.delete(f"/api/devices/{created['id']}", headers=admin.headers).status_code == 204
    assert client.get(f"/api/devices/{created['id']}", headers=admin.headers).status_code == 404

    actions = db.scalars(select(AuditEvent.action).where(AuditEvent.entity_type == "device",
                                                         AuditEvent.entity_id == str(created["id"]))
                         .order_by(AuditEvent.id)).all()
    assert actions == ["create", "update", "delete"]
    after = db.scalar(select(AuditEvent.after).where(AuditEvent.entity_id == str(created["id"]),
                                                     AuditEvent.action == "create"))
    assert "token_hash" not in after and token not in str(after)


def test_equipment_and_profile_of_another_enterprise_are_refused(client, db: Session):
    mine, other = make_actor(db), make_actor(db)
    foreign_eq = make_equipment(db, other.enterprise_id)
    foreign_profile = client.post("/api/device-profiles", json=PROFILE, headers=other.headers).json()
    r = client.post("/api/devices", json={"name": "d1", "equipment_id": foreign_eq.id}, headers=mine.headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "equipment_id"
    r = client.post("/api/devices", json={"name": "d1", "profile_id": foreign_profile["id"]}, headers=mine.headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "profile_id"


def test_another_enterprise_gets_404_for_every_device_route(client, db: Session):
    owner, stranger = make_actor(db), make_actor(db)
    device = client.post("/api/devices", json={"name": "cl2-detector-3"}, headers=owner.headers).json()
    profile = client.post("/api/device-profiles", json=PROFILE, headers=owner.headers).json()
    dev = f"/api/devices/{device['id']}"
    for method, path, body in [
        ("GET", dev, None), ("PATCH", dev, {"label": "x"}), ("DELETE", dev, None),
        ("GET", f"{dev}/credentials", None), ("POST", f"{dev}/token/rotate", None),
        ("POST", f"{dev}/token/revoke", None), ("GET", f"{dev}/attributes", None),
        ("POST", f"{dev}/attributes?scope=server", {"a": 1}), ("GET", f"{dev}/errors", None),
        ("POST", f"{dev}/rpc", {"method": "reboot", "oneway": True}),
        ("GET", f"/api/device-profiles/{profile['id']}", None),
        ("PATCH", f"/api/device-profiles/{profile['id']}", {"description": "x"}),
        ("DELETE", f"/api/device-profiles/{profile['id']}", None),
    ]:
        r = client.request(method, path, json=body, headers=stranger.headers)
        assert r.status_code == 404, (method, path, r.status_code, r.text)
    assert client.get("/api/devices", headers=stranger.headers).json()["items"] == []
    # and the owner still has it, untouched
    assert client.get(dev, headers=owner.headers).json()["label"] == ""


def test_operator_reads_but_cannot_write(client, db: Session):
    admin = make_actor(db)
    operator = make_actor(db, enterprise_id=admin.enterprise_id, role=Role.operator)
    device = client.post("/api/devices", json={"name": "tank-level-1"}, headers=admin.headers).json()
    assert client.get(f"/api/devices/{device['id']}", headers=operator.headers).status_code == 200
    assert client.post("/api/devices", json={"name": "x"}, headers=operator.headers).status_code == 403
    assert client.post(f"/api/devices/{device['id']}/token/rotate", headers=operator.headers).status_code == 403


def test_list_pages_filters_search_and_status(client, db: Session):
    admin = make_actor(db)
    eq = make_equipment(db, admin.enterprise_id)
    profile = client.post("/api/device-profiles", json=PROFILE, headers=admin.headers).json()
    gw = client.post("/api/devices", json={"name": "Gateway cell room", "is_gateway": True},
                     headers=admin.headers).json()
    ids = []
    for i in range(5):
        body = {"name": f"Cell {i} voltage", "profile_id": profile["id"] if i % 2 == 0 else None,
                "equipment_id": eq.id if i == 1 else None, "gateway_id": gw["id"] if i >= 3 else None}
        ids.append(client.post("/api/devices", json=body, headers=admin.headers).json()["id"])
    client.post("/api/devices", json={"name": "100%_tank"}, headers=admin.headers)

    seen, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/devices", params=params, headers=admin.headers).json()
        seen += [d["id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == 7 and seen == sorted(seen)

    def names(**params):
        r = client.get("/api/devices", params=params, headers=admin.headers)
        assert r.status_code == 200, r.text
        return [d["name"] for d in r.json()["items"]]

    assert names(profile_id=profile["id"]) == ["Cell 0 voltage", "Cell 2 voltage", "Cell 4 voltage"]
    assert names(equipment_id=eq.id) == ["Cell 1 voltage"]
    assert names(is_gateway=True) == ["Gateway cell room"]
    assert names(gateway_id=gw["id"]) == ["Cell 3 voltage", "Cell 4 voltage"]
    assert names(q="CELL 2") == ["Cell 2 voltage"]
    assert names(q="%_") == ["100%_tank"]  # LIKE wildcards are searched literally

    # Cell 0 (profile timeout 120 s) seen 60 s ago: online; Cell 2 seen 200 s ago: offline;
    # Cell 1 (no profile, default 600 s) seen 500 s ago: online.
    now = utcnow()
    for device_id, ago in ((ids[0], 60), (ids[2], 200), (ids[1], 500)):
        db.execute(update(Device).where(Device.id == device_id).values(last_seen_at=now - timedelta(seconds=ago)))
    db.flush()
    assert names(status="online") == ["Cell 0 voltage", "Cell 1 voltage"]
    assert len(names(status="offline")) == 5
    assert client.get(f"/api/devices/{ids[2]}", headers=admin.headers).json()["status"] == "offline"
    assert client.get(f"/api/devices/{ids[0]}", headers=admin.headers).json()["status"] == "online"
    assert client.get("/api/devices", params={"status": "sleeping"}, headers=admin.headers).status_code == 422
    assert client.get("/api/devices", params={"cursor": "garbage!"}, headers=admin.headers).status_code == 422


def test_token_rotation_and_revocation(client, db: Session):
    admin = make_actor(db)
    device = client.post("/api/devices", json={"name": "pump-7"}, headers=admin.headers).json()
    old = device["access_token"]
    r = client.post(f"/api/devices/{device['id']}/token/rotate", headers=admin.headers)
    assert r.status_code == 200
    new = r.json()["access_token"]
    assert new != old and r.json()["token_prefix"] == new[:6]
    row = db.get(Device, device["id"])
    db.refresh(row)
    assert row.token_hash == hash_token(new)
    assert db.scalar(select(Device.id).where(Device.token_hash == hash_token(old))) is None

    r = client.post(f"/api/devices/{device['id']}/token/revoke", headers=admin.headers)
    assert r.status_code == 200 and r.json()["revoked"] is True
    assert client.get(f"/api/devices/{device['id']}/credentials", headers=admin.headers).json()["revoked"] is True
    actions = db.scalars(select(AuditEvent.action).where(AuditEvent.entity_id == str(device["id"]))
                         .order_by(AuditEvent.id)).all()
    assert actions == ["create", "rotate_token", "revoke_token"]
    # rotating again issues a working token and lifts the revocation
    r = client.post(f"/api/devices/{device['id']}/token/rotate", headers=admin.headers)
    assert client.get(f"/api/devices/{device['id']}/credentials", headers=admin.headers).json()["revoked"] is False


def test_server_and_shared_attributes(client, db: Session, app):
    admin = make_actor(db)
    device = client.post("/api/devices", json={"name": "cl2-detector-1"}, headers=admin.headers).json()
    pushed = []
    app.state.events.add_listener("attributes.", lambda e: pushed.append((e.topic, e.data)))
    url = f"/api/devices/{device['id']}/attributes"
    r = client.post(url, params={"scope": "shared"}, json={"alarm_ppm": 1.0, "config": {"interval_s": 5}},
                    headers=admin.headers)
    assert r.status_code == 200, r.text
    assert {a["key"]: a["value"] for a in r.json()} == {"alarm_ppm": 1.0, "config": {"interval_s": 5}}
    assert pushed == [(f"attributes.{admin.enterprise_id}.{device['id']}",
                       {"device_id": device["id"], "values": {"alarm_ppm": 1.0, "config": {"interval_s": 5}}})]
    client.post(url, params={"scope": "server"}, json={"location": "cell room 1"}, headers=admin.headers)
    client.post(url, params={"scope": "shared"}, json={"alarm_ppm": 2.0}, headers=admin.headers)
    everything = client.get(url, headers=admin.headers).json()
    assert {(a["scope"], a["key"]): a["value"] for a in everything} == {
        ("shared", "alarm_ppm"): 2.0, ("shared", "config"): {"interval_s": 5}, ("server", "location"): "cell room 1"}
    assert [a["key"] for a in client.get(url, params={"scope": "server"}, headers=admin.headers).json()] == ["location"]
    assert client.post(url, params={"scope": "client"}, json={"a": 1}, headers=admin.headers).status_code == 422
    assert client.post(url, params={"scope": "server"}, json={}, headers=admin.headers).status_code == 422
    assert client.post(url, params={"scope": "server"}, json=[1], headers=admin.headers).status_code == 422
    assert client.delete(url, params={"scope": "shared", "keys": "config"}, headers=admin.headers).status_code == 204
    assert len(client.get(url, params={"scope": "shared"}, headers=admin.headers).json()) == 1


def test_oneway_rpc_is_published_for_the_transport(client, db: Session, app):
    admin = make_actor(db)
    device = client.post("/api/devices", json={"name": "valve-3"}, headers=admin.headers).json()
    sent = []
    app.state.events.add_listener("rpc.", lambda e: sent.append((e.topic, e.data)))
    r = client.post(f"/api/devices/{device['id']}/rpc", json={"method": "setValve", "params": {"open": True},
                                                              "oneway": True}, headers=admin.headers)
    assert r.status_code == 202
    assert sent[0][0] == f"rpc.{admin.enterprise_id}.{device['id']}"
    assert sent[0][1]["method"] == "setValve" and sent[0][1]["params"] == {"open": True}
    assert sent[0][1]["id"] == r.json()["id"] and r.json()["id"] > 0
