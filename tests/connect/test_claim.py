"""Provisioning by claim code: a steward pre-creates devices, a small enterprise claims one."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from tests.connect.builders import make_actor, make_steward

from ecoplat.connect.ingest import hash_token
from ecoplat.connect.models import Device
from ecoplat.db import utcnow
from ecoplat.tenancy.models import AuditEvent, Role


def _provision(client, steward, name="Cl2 detector SN-0042", **extra):
    r = client.post("/api/devices/provision", json={"name": name, "type": "chlorine_detector", **extra},
                    headers=steward.headers)
    assert r.status_code == 201, r.text
    return r.json()


def test_steward_provisions_and_a_small_enterprise_claims(client, db: Session):
    steward = make_steward(db)
    sme = make_actor(db)
    other = make_actor(db)
    provisioned = _provision(client, steward)
    device_id, code = provisioned["device"]["id"], provisioned["claim_code"]
    assert provisioned["device"]["enterprise_id"] is None and provisioned["device"]["token_prefix"] == ""
    assert len(code.replace("-", "")) == 12
    # the steward sees its unclaimed device; the future owner does not yet
    listed = client.get("/api/devices/provisioned", headers=steward.headers).json()["items"]
    assert [d["id"] for d in listed] == [device_id]
    assert client.get(f"/api/devices/{device_id}", headers=steward.headers).status_code == 200
    assert client.get(f"/api/devices/{device_id}", headers=sme.headers).status_code == 404

    # people type codes from a label: case and dashes do not matter
    r = client.post("/api/devices/claim", json={"claim_code": code.lower().replace("-", " ")}, headers=sme.headers)
    assert r.status_code == 200, r.text
    claimed = r.json()
    assert claimed["id"] == device_id and claimed["enterprise_id"] == sme.enterprise_id
    token = claimed["access_token"]
    row = db.get(Device, device_id)
    db.refresh(row)
    assert row.token_hash == hash_token(token) and row.claimed_at is not None

    # now it is the small enterprise's: in its list, invisible to the steward and to others
    assert [d["id"] for d in client.get("/api/devices", headers=sme.headers).json()["items"]] == [device_id]
    assert client.get(f"/api/devices/{device_id}", headers=steward.headers).status_code == 404
    assert client.get(f"/api/devices/{device_id}", headers=other.headers).status_code == 404
    assert client.get("/api/devices/provisioned", headers=steward.headers).json()["items"] == []

    # the code is spent
    again = client.post("/api/devices/claim", json={"claim_code": code}, headers=other.headers)
    assert again.status_code == 409 and again.headers["content-type"] == "application/problem+json"
    actions = db.scalars(select(AuditEvent.action).where(AuditEvent.entity_id == str(device_id))
                         .order_by(AuditEvent.id)).all()
    assert actions == ["provision", "claim"]


def test_wrong_and_expired_codes(client, db: Session):
    steward = make_steward(db)
    sme = make_actor(db)
    r = client.post("/api/devices/claim", json={"claim_code": "AAAA-BBBB-CCCC"}, headers=sme.headers)
    assert r.status_code == 404 and "claim code" in r.json()["detail"]
    provisioned = _provision(client, steward, name="Tank level SN-7")
    db.execute(update(Device).where(Device.id == provisioned["device"]["id"])
               .values(claim_expires_at=utcnow() - timedelta(minutes=1)))
    db.flush()
    r = client.post("/api/devices/claim", json={"claim_code": provisioned["claim_code"]}, headers=sme.headers)
    assert r.status_code == 410 and "expired" in r.json()["detail"]
    assert client.post("/api/devices/claim", json={"claim_code": ""}, headers=sme.headers).status_code == 422


def test_claim_conflicts_with_a_device_of_the_same_name(client, db: Session):
    steward = make_steward(db)
    sme = make_actor(db)
    client.post("/api/devices", json={"name": "Cl2 detector SN-0042"}, headers=sme.headers)
    provisioned = _provision(client, steward)
    r = client.post("/api/devices/claim", json={"claim_code": provisioned["claim_code"]}, headers=sme.headers)
    assert r.status_code == 409
    # nothing changed: still unclaimed and claimable once the name is free
    assert db.get(Device, provisioned["device"]["id"]).enterprise_id is None


def test_only_provisioning_roles_provision(client, db: Session):
    sme = make_actor(db)
    operator = make_actor(db, enterprise_id=sme.enterprise_id, role=Role.operator)
    assert client.post("/api/devices/provision", json={"name": "x"}, headers=sme.headers).status_code == 403
    steward = make_steward(db)
    code = _provision(client, steward)["claim_code"]
    assert client.post("/api/devices/claim", json={"claim_code": code}, headers=operator.headers).status_code == 403
