"""Device pages (server-rendered): list, search, create with the token shown once, claim,
device page with counters, errors and attributes, token rotation, and tenant isolation."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session
from tests.connect.builders import make_actor, make_equipment, make_steward

from ecoplat.connect.ingest import hash_token
from ecoplat.connect.models import Device


def _signed_in(client, actor) -> None:  # type: ignore[no-untyped-def]
    client.cookies.set("ecoplat_access", actor.token)


def test_device_list_search_and_navigation(client, db: Session):
    admin = make_actor(db)
    for name in ("E-101 electrolyzer", "A-301 Cl2 detector"):
        client.post("/api/devices", json={"name": name}, headers=admin.headers)
    _signed_in(client, admin)
    r = client.get("/devices")
    assert r.status_code == 200
    assert 'href="/devices"' in r.text and "E-101 electrolyzer" in r.text and "A-301 Cl2 detector" in r.text
    r = client.get("/devices", params={"q": "cl2"})
    assert "A-301 Cl2 detector" in r.text and "E-101 electrolyzer" not in r.text
    assert "No devices match." in client.get("/devices", params={"status": "online"}).text


def test_create_from_the_page_shows_the_token_once(client, db: Session):
    admin = make_actor(db)
    _signed_in(client, admin)
    r = client.post("/devices", data={"name": "T-301 chlorine tank", "type": "liquid_chlorine_tank"})
    assert r.status_code == 201
    token = re.search(r'data-testid="access-token">([^<]+)<', r.text).group(1)
    device = db.scalar(select(Device).where(Device.enterprise_id == admin.enterprise_id))
    assert device.token_hash == hash_token(token)
    page = client.get(f"/devices/{device.id}")
    assert page.status_code == 200 and token not in page.text and token[:6] in page.text

    dup = client.post("/devices", data={"name": "T-301 chlorine tank"})
    assert dup.status_code == 409 and "already exists" in dup.text
    empty = client.post("/devices", data={"name": ""})
    assert empty.status_code == 422 and 'aria-invalid="true"' in empty.text

    rotated = client.post(f"/devices/{device.id}/token/rotate")
    new = re.search(r'data-testid="access-token">([^<]+)<', rotated.text).group(1)
    db.refresh(device)
    assert new != token and device.token_hash == hash_token(new)


def test_steward_provisions_and_the_sme_claims_from_the_pages(client, db: Session):
    steward, sme = make_steward(db), make_actor(db)
    _signed_in(client, steward)
    r = client.post("/devices/provision", data={"name": "Cl2 detector SN-9", "type": "chlorine_detector"})
    assert r.status_code == 201
    code = re.search(r'data-testid="claim-code">([^<]+)<', r.text).group(1)
    listing = client.get("/devices").text
    assert "Cl2 detector SN-9" in listing and code not in listing and "waiting to be claimed" in listing
    # the section appears once, in the page body, and the browser tab title stays plain text
    assert listing.count('id="provisioning"') == 1
    assert "<section" not in re.search(r"<title>(.*?)</title>", listing, re.S).group(1)
    assert client.post("/devices/provision", data={"name": ""}).status_code == 422
    _signed_in(client, sme)
    assert "Pre-provisioned devices" not in client.get("/devices").text
    wrong = client.post("/devices/claim", data={"claim_code": "ZZZZ-ZZZZ-ZZZZ"})
    assert wrong.status_code == 404 and 'role="alert"' in wrong.text
    r = client.post("/devices/claim", data={"claim_code": code})
    assert r.status_code == 200 and "Cl2 detector SN-9" in r.text and 'data-testid="access-token"' in r.text


def test_device_page_of_another_enterprise_is_404(client, db: Session):
    owner, stranger = make_actor(db), make_actor(db)
    device = client.post("/api/devices", json={"name": "secret pump"}, headers=owner.headers).json()
    _signed_in(client, stranger)
    r = client.get(f"/devices/{device['id']}")
    assert r.status_code == 404 and "secret pump" not in r.text
    assert client.post(f"/devices/{device['id']}/token/rotate").status_code == 404
    assert client.get("/devices/99999999999").status_code == 404


def test_device_page_shows_attributes_and_counters(client, db: Session):
    admin = make_actor(db)
    device = client.post("/api/devices", json={"name": "cl2-detector-1"}, headers=admin.headers).json()
    client.post(f"/api/devices/{device['id']}/attributes", params={"scope": "shared"}, json={"alarm_ppm": 1.5},
                headers=admin.headers)
    _signed_in(client, admin)
    r = client.get(f"/devices/{device['id']}")
    assert "alarm_ppm" in r.text and "1.5" in r.text and 'id="live-chart"' in r.text
    assert "No rejected messages." in r.text


def test_signed_out_visitors_are_sent_to_login(client):
    r = client.get("/devices", follow_redirects=False)
    assert r.status_code in (302, 303) and "/login" in r.headers["location"]


def test_device_pages_speak_chinese(client, db: Session):
    admin = make_actor(db, locale="zh_CN")
    device = client.post("/api/devices", json={"name": "E-101 电解槽"}, headers=admin.headers).json()
    _signed_in(client, admin)
    listing = client.get("/devices").text
    assert "<h1>设备</h1>" in listing and "离线" in listing and "E-101 电解槽" in listing
    page = client.get(f"/devices/{device['id']}").text
    assert "更换令牌" in page and "按原因统计的错误" in page and "Rotate token" not in page


def test_device_settings_assign_profile_and_equipment(client, db: Session):
    admin, other = make_actor(db), make_actor(db)
    eq = make_equipment(db, admin.enterprise_id)
    foreign_eq = make_equipment(db, other.enterprise_id)
    profile = client.post("/api/device-profiles", json={"name": "Chlorine gas detector"}, headers=admin.headers).json()
    device = client.post("/api/devices", json={"name": "A-301"}, headers=admin.headers).json()
    _signed_in(client, admin)
    page = client.get(f"/devices/{device['id']}").text
    assert "Chlorine gas detector" in page and "E-101" in page
    r = client.post(f"/devices/{device['id']}", data={"label": "Cell room east wall", "profile_id": str(profile["id"]),
                                                      "equipment_id": str(eq.id)}, follow_redirects=False)
    assert r.status_code == 303
    got = client.get(f"/api/devices/{device['id']}", headers=admin.headers).json()
    assert (got["label"], got["profile_id"], got["equipment_id"]) == ("Cell room east wall", profile["id"], eq.id)
    r = client.post(f"/devices/{device['id']}", data={"label": "x", "equipment_id": str(foreign_eq.id)})
    assert r.status_code == 422 and 'id="e-equipment_id"' in r.text
    assert client.get(f"/api/devices/{device['id']}", headers=admin.headers).json()["equipment_id"] == eq.id
