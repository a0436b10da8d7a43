"""CRUD of the ISA-95 plant tree (sites, areas, lines, workstations, equipment) through the API:
pagination, filters, parent checks, delete conflicts and cascade, audit events."""

from __future__ import annotations

from sqlalchemy.orm import Session

from ecoplat.config import Settings

from .builders import make_site, make_tree
from .conftest import World


def test_site_area_line_workstation_equipment_round_trip(client, world: World) -> None:
    h = world.a.headers
    site = client.post("/api/sites", headers=h, json={"name": "Weifang plant", "code": "WF",
                                                      "timezone": "Asia/Shanghai", "latitude": 36.7, "longitude": 119.1})
    assert site.status_code == 201, site.text
    assert site.json()["enterprise_id"] == world.a.enterprise.id
    sid = site.json()["id"]
    area = client.post("/api/areas", headers=h, json={"site_id": sid, "name": "Electrolysis"})
    assert area.status_code == 201, area.text
    line = client.post("/api/lines", headers=h, json={"area_id": area.json()["id"], "name": "Cell room 1"})
    assert line.status_code == 201, line.text
    ws = client.post("/api/workstations", headers=h, json={"line_id": line.json()["id"], "name": "Cell 1",
                                                           "position": 1})
    assert ws.status_code == 201, ws.text
    eq = client.post("/api/equipment", headers=h, json={
        "site_id": sid, "workstation_id": ws.json()["id"], "name": "Membrane electrolyzer", "tag": "E-101",
        "equipment_type_iri": "https://ecoplat.dev/kg/MembraneElectrolyzer"})
    assert eq.status_code == 201, eq.text
    # the workstation implies its line and area
    assert eq.json()["line_id"] == line.json()["id"] and eq.json()["area_id"] == area.json()["id"]

    got = client.get(f"/api/equipment/{eq.json()['id']}", headers=h)
    assert got.status_code == 200 and got.json()["tag"] == "E-101"
    patched = client.patch(f"/api/sites/{sid}", headers=h, json={"name": "Weifang works", "latitude": None})
    assert patched.status_code == 200, patched.text
    assert patched.json()["name"] == "Weifang works" and patched.json()["latitude"] is None
    assert patched.json()["timezone"] == "Asia/Shanghai"

    by_type = client.get("/api/equipment", headers=h,
                         params={"equipment_type_iri": "https://ecoplat.dev/kg/MembraneElectrolyzer"}).json()["items"]
    assert {e["id"] for e in by_type} == {eq.json()["id"], world.a.equipment.id}
    by_ws = client.get("/api/equipment", headers=h, params={"workstation_id": ws.json()["id"]}).json()["items"]
    assert [e["id"] for e in by_ws] == [eq.json()["id"]]
    areas = client.get("/api/areas", headers=h, params={"site_id": sid}).json()["items"]
    assert [a["name"] for a in areas] == ["Electrolysis"]
    assert [s["name"] for s in client.get("/api/sites", headers=h, params={"q": "weifang"}).json()["items"]] \
        == ["Weifang works"]


def test_every_write_leaves_an_audit_event_with_before_and_after(client, world: World) -> None:
    h = world.a.headers
    sid = client.post("/api/sites", headers=h, json={"name": "Before"}).json()["id"]
    client.patch(f"/api/sites/{sid}", headers=h, json={"name": "After"})
    assert client.delete(f"/api/sites/{sid}", headers=h).status_code == 204
    events = client.get("/api/audit-events", headers=h,
                        params={"entity_type": "site", "entity_id": str(sid)}).json()["items"]
    assert [e["action"] for e in events] == ["delete", "update", "create"]  # newest first
    delete, update, create = events
    assert create["after"]["name"] == "Before" and create["before"] is None
    assert update["before"]["name"] == "Before" and update["after"]["name"] == "After"
    assert delete["before"]["name"] == "After" and delete["after"] is None
    assert all(e["actor"] == world.a.admin.email and e["enterprise_id"] == world.a.enterprise.id for e in events)
    one = client.get(f"/api/audit-events/{update['id']}", headers=h)
    assert one.status_code == 200 and one.json()["id"] == update["id"]


def test_deleting_a_site_with_areas_is_a_conflict_unless_cascade(client, world: World) -> None:
    h = world.a.headers
    r = client.delete(f"/api/sites/{world.a.site.id}", headers=h)
    assert r.status_code == 409
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "area" in r.json()["detail"] and "cascade=true" in r.json()["detail"]
    assert client.delete(f"/api/sites/{world.a.site.id}", headers=h, params={"cascade": "true"}).status_code == 204
    for path in (f"/api/sites/{world.a.site.id}", f"/api/areas/{world.a.area.id}", f"/api/lines/{world.a.line.id}",
                 f"/api/workstations/{world.a.workstation.id}", f"/api/equipment/{world.a.equipment.id}"):
        assert client.get(path, headers=h).status_code == 404, path


def test_deleting_a_line_with_workstations_is_a_conflict(client, world: World) -> None:
    r = client.delete(f"/api/lines/{world.a.line.id}", headers=world.a.headers)
    assert r.status_code == 409 and "workstation" in r.json()["detail"]
    r = client.delete(f"/api/areas/{world.a.area.id}", headers=world.a.headers)
    assert r.status_code == 409 and "line" in r.json()["detail"]


def test_equipment_place_must_be_one_branch_of_its_site(client, world: World, db: Session) -> None:
    other_site = make_site(db, world.a.enterprise)
    r = client.post("/api/equipment", headers=world.a.headers,
                    json={"site_id": other_site.id, "area_id": world.a.area.id, "name": "Pump"})
    assert r.status_code == 422
    assert r.json()["detail"].startswith("area_id")
    r = client.patch(f"/api/equipment/{world.a.equipment.id}", headers=world.a.headers,
                     json={"workstation_id": None, "line_id": None, "area_id": None})
    assert r.status_code == 200, r.text
    assert (r.json()["area_id"], r.json()["line_id"], r.json()["workstation_id"]) == (None, None, None)


def test_operator_reads_the_plant_but_cannot_change_it(client, world: World, settings: Settings) -> None:
    from .builders import headers_for

    h = headers_for(settings, world.a.operator)
    assert client.get("/api/sites", headers=h).status_code == 200
    r = client.post("/api/sites", headers=h, json={"name": "x"})
    assert r.status_code == 403
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "plant:write" in r.json()["detail"]


def test_keyset_pagination_walks_every_site_once(client, db: Session, settings: Settings) -> None:
    tree = make_tree(db, settings)
    for _ in range(6):
        make_site(db, tree.enterprise)
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        body = client.get("/api/sites", headers=tree.headers, params=params).json()
        seen += [s["id"] for s in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and len(seen) == 7 and seen == sorted(set(seen))


def test_bad_cursor_and_limit_answer_422_naming_the_parameter(client, world: World, settings: Settings) -> None:
    r = client.get("/api/sites", headers=world.a.headers, params={"cursor": "not-a-cursor"})
    assert r.status_code == 422 and r.json()["detail"].startswith("cursor")
    r = client.get("/api/sites", headers=world.a.headers, params={"cursor": "WyJ4Il0"})  # ["x"]
    assert r.status_code == 422 and r.json()["detail"].startswith("cursor")
    r = client.get("/api/sites", headers=world.a.headers, params={"limit": settings.page_size_max + 1})
    assert r.status_code == 422 and r.json()["detail"].startswith("limit")
    r = client.get("/api/sites", headers=world.a.headers, params={"limit": 0})
    assert r.status_code == 422 and "limit" in r.json()["detail"]


def test_moving_equipment_re_derives_and_clears_levels(client, world: World, db: Session) -> None:
    from .builders import make_area, make_line, make_workstation

    h, eq = world.a.headers, world.a.equipment
    area2 = make_area(db, world.a.site)
    line2 = make_line(db, area2)
    ws2 = make_workstation(db, line2)

    def place() -> tuple[int | None, int | None, int | None]:
        body = client.get(f"/api/equipment/{eq.id}", headers=h).json()
        return body["area_id"], body["line_id"], body["workstation_id"]

    assert client.patch(f"/api/equipment/{eq.id}", headers=h, json={"workstation_id": ws2.id}).status_code == 200
    assert place() == (area2.id, line2.id, ws2.id)
    assert client.patch(f"/api/equipment/{eq.id}", headers=h, json={"workstation_id": None}).status_code == 200
    assert place() == (area2.id, line2.id, None)  # clearing a level keeps the ones above
    assert client.patch(f"/api/equipment/{eq.id}", headers=h, json={"line_id": world.a.line.id}).status_code == 200
    assert place() == (world.a.area.id, world.a.line.id, None)
    assert client.patch(f"/api/equipment/{eq.id}", headers=h, json={"area_id": area2.id}).status_code == 200
    assert place() == (area2.id, None, None)
    r = client.patch(f"/api/equipment/{eq.id}", headers=h, json={"area_id": area2.id, "line_id": world.a.line.id})
    assert r.status_code == 422 and r.json()["detail"].startswith("line_id")
