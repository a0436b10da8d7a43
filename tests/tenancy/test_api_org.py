"""Ecosystems, enterprises, users and API keys through the API: scoping per role, validation,
conflicts, text search and filters."""

from __future__ import annotations

from sqlalchemy.orm import Session

from ecoplat.config import Settings
from ecoplat.tenancy.models import Role

from .builders import headers_for, make_enterprise, make_user
from .conftest import World


def test_normal_user_lists_only_their_enterprise_and_its_ecosystems(client, world: World) -> None:
    ents = client.get("/api/enterprises", headers=world.a.headers).json()["items"]
    assert [e["id"] for e in ents] == [world.a.enterprise.id]
    assert ents[0]["timezone"] == "Asia/Shanghai"  # own enterprise: private fields too
    ecos = client.get("/api/ecosystems", headers=world.a.headers).json()["items"]
    assert [e["id"] for e in ecos] == [world.a.ecosystem.id]
    assert ecos[0]["member_count"] == 2  # A and the steward's co-builder
    assert client.get(f"/api/enterprises/{world.b.enterprise.id}", headers=world.a.headers).status_code == 404
    assert client.get(f"/api/ecosystems/{world.b.ecosystem.id}", headers=world.a.headers).status_code == 404


def test_steward_sees_member_enterprises_public_fields_but_not_their_plant(client, world: World) -> None:
    h = world.steward_headers
    ents = {e["id"]: e for e in client.get("/api/enterprises", headers=h).json()["items"]}
    assert world.a.enterprise.id in ents and world.b.enterprise.id not in ents
    member = ents[world.a.enterprise.id]
    assert member["name"] == world.a.enterprise.name and member["country"] == "CN"
    assert member["isic_class"] == "2011" and member["size_class"] == "small"
    assert member["memberships"] == [{"ecosystem_id": world.a.ecosystem.id, "role": "member"}]
    assert member["timezone"] is None and member["limits"] is None  # private fields withheld
    detail = client.get(f"/api/enterprises/{world.a.enterprise.id}", headers=h)
    assert detail.status_code == 200 and detail.json()["timezone"] is None
    assert client.get(f"/api/enterprises/{world.b.enterprise.id}", headers=h).status_code == 404
    # but none of the member's private data
    assert client.get(f"/api/sites/{world.a.site.id}", headers=h).status_code in (403, 404)
    assert client.get(f"/api/users/{world.a.admin.id}", headers=h).status_code in (403, 404)
    # and may not edit the member
    r = client.patch(f"/api/enterprises/{world.a.enterprise.id}", headers=h, json={"name": "x"})
    assert r.status_code == 403


def test_steward_creates_an_enterprise_into_their_ecosystem(client, world: World) -> None:
    r = client.post("/api/enterprises", headers=world.steward_headers,
                    json={"name": "Small PVC works", "country": "cn", "isic_class": "2013", "size_class": "micro"})
    assert r.status_code == 201, r.text
    assert r.json()["country"] == "CN"
    assert r.json()["memberships"] == [{"ecosystem_id": world.a.ecosystem.id, "role": "member"}]
    members = client.get("/api/enterprises", headers=world.steward_headers,
                         params={"ecosystem_id": world.a.ecosystem.id}).json()["items"]
    assert r.json()["id"] in {m["id"] for m in members}


def test_enterprise_admin_cannot_create_enterprises(client, world: World) -> None:
    r = client.post("/api/enterprises", headers=world.a.headers,
                    json={"name": "x", "country": "CN", "isic_class": "2011", "size_class": "small"})
    assert r.status_code == 403


def test_enterprise_validation_names_each_field(client, world: World) -> None:
    r = client.post("/api/enterprises", headers=world.platform_headers,
                    json={"name": "x", "country": "XX", "isic_class": "20A1", "size_class": "huge"})
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    fields = {e["field"] for e in r.json()["errors"]}
    assert fields == {"country", "isic_class", "size_class"}
    assert r.json()["detail"].startswith("country")
    assert "ISO 3166-1" in r.json()["errors"][0]["message"]


def test_enterprise_answers_are_exactly_what_their_response_models_write(client, world: World, db: Session) -> None:
    """The list and detail answers are written from plain data (api_common.json_response); read
    back through Page[EnterpriseOut] / EnterpriseOut and dumped as FastAPI would dump the model,
    they must give the same bytes: same fields, order, datetimes (Z, microseconds) and nulls."""
    from datetime import UTC, datetime

    from pydantic import TypeAdapter

    from ecoplat.pagination import Page
    from ecoplat.tenancy.schemas import EnterpriseOut

    limits = {"maxPayloadSize": 65536, "rateLimits": {"messages": "200:1,6000:60"}}
    make_enterprise(db, ecosystem=world.a.ecosystem, name="山东氯碱 \"Quoted\" Works", limits=limits,
                    created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))  # no microseconds
    page_model, item_model = TypeAdapter(Page[EnterpriseOut]), TypeAdapter(EnterpriseOut)
    for headers in (world.platform_headers, world.steward_headers, world.a.headers):
        r = client.get("/api/enterprises", headers=headers, params={"limit": 500})
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        assert r.content == page_model.dump_json(page_model.validate_json(r.content))
        items = r.json()["items"]
        assert items
        for item in items:
            d = client.get(f"/api/enterprises/{item['id']}", headers=headers)
            assert d.status_code == 200 and d.headers["content-type"] == "application/json"
            assert d.content == item_model.dump_json(item_model.validate_json(d.content))
            assert d.json() == item
    seen = {e["name"]: e for e in client.get("/api/enterprises", headers=world.platform_headers,
                                             params={"limit": 500}).json()["items"]}
    mine = seen["山东氯碱 \"Quoted\" Works"]
    assert mine["limits"] == limits and mine["created_at"] == "2026-01-02T03:04:05Z"
    steward_view = client.get("/api/enterprises", headers=world.steward_headers).json()["items"]
    assert any(e["limits"] is None and e["created_at"] is None for e in steward_view)


def test_platform_admin_filters_and_searches_enterprises(client, world: World, db: Session) -> None:
    make_enterprise(db, name="Shandong Haihua Chlor-Alkali", country="CN", size_class="large", isic_class="2011")
    make_enterprise(db, name="山东氯碱化工有限公司", country="CN", size_class="medium", isic_class="2011")
    make_enterprise(db, name="Rheinische Chlor GmbH", country="DE", size_class="medium", isic_class="2011")
    h = world.platform_headers

    def names(**params: str) -> set[str]:
        r = client.get("/api/enterprises", headers=h, params=params | {"limit": 500})
        assert r.status_code == 200, r.text
        return {e["name"] for e in r.json()["items"]}

    assert names(q="chlor") == {"Shandong Haihua Chlor-Alkali", "Rheinische Chlor GmbH"}
    assert names(q="CHLOR-ALK") == {"Shandong Haihua Chlor-Alkali"}
    assert names(q="氯碱化工") == {"山东氯碱化工有限公司"}
    assert names(q="氯碱") == {"山东氯碱化工有限公司"}  # shorter than a trigram
    assert names(q="100%") == set()  # wildcards are literal
    assert names(country="DE") == {"Rheinische Chlor GmbH"}
    assert names(q="chlor", size_class="medium") == {"Rheinische Chlor GmbH"}
    r = client.get("/api/enterprises", headers=h, params={"country": "D1"})
    assert r.status_code in (200, 422)


def test_search_follows_renames(client, world: World) -> None:
    r = client.patch(f"/api/enterprises/{world.a.enterprise.id}", headers=world.a.headers,
                     json={"name": "Qilu Caustic Soda"})
    assert r.status_code == 200, r.text
    found = client.get("/api/enterprises", headers=world.platform_headers, params={"q": "caustic"}).json()["items"]
    assert [e["id"] for e in found] == [world.a.enterprise.id]


def test_ecosystem_slug_conflict_and_delete_with_members(client, world: World) -> None:
    h = world.platform_headers
    r = client.post("/api/ecosystems", headers=h, json={"slug": world.a.ecosystem.slug, "name_en": "x",
                                                        "name_zh": "x", "industry": "x"})
    assert r.status_code == 409 and world.a.ecosystem.slug in r.json()["detail"]
    created = client.post("/api/ecosystems", headers=h, json={"slug": "hvac", "name_en": "HVAC",
                                                              "name_zh": "暖通空调", "industry": "hvac"})
    assert created.status_code == 201, created.text
    assert client.post("/api/ecosystems", headers=world.a.headers,
                       json={"slug": "hvac2", "name_en": "x", "name_zh": "x", "industry": "x"}).status_code == 403
    r = client.delete(f"/api/ecosystems/{world.a.ecosystem.id}", headers=h)
    assert r.status_code == 409 and "cascade" in r.json()["detail"]
    assert client.delete(f"/api/ecosystems/{world.a.ecosystem.id}", headers=h,
                         params={"cascade": "true"}).status_code == 204
    # the member enterprise stays
    assert client.get(f"/api/enterprises/{world.a.enterprise.id}", headers=h).status_code == 200


def test_steward_edits_only_their_ecosystem(client, world: World) -> None:
    r = client.patch(f"/api/ecosystems/{world.a.ecosystem.id}", headers=world.steward_headers,
                     json={"description": "Chlor-alkali producers of Shandong"})
    assert r.status_code == 200 and r.json()["description"].startswith("Chlor-alkali")
    assert client.patch(f"/api/ecosystems/{world.a.ecosystem.id}", headers=world.a.headers,
                        json={"description": "x"}).status_code == 403


def test_user_crud_with_role_and_email_rules(client, world: World) -> None:
    h = world.a.headers
    r = client.post("/api/users", headers=h, json={"email": "Li.Wei@Example.com", "password": "long-enough-pw",
                                                   "roles": ["engineer", "operator"], "full_name": "Li Wei"})
    assert r.status_code == 201, r.text
    uid = r.json()["id"]
    assert r.json()["email"] == "li.wei@example.com" and "password" not in r.text
    dup = client.post("/api/users", headers=h, json={"email": "li.wei@example.com", "password": "long-enough-pw",
                                                     "roles": ["operator"]})
    assert dup.status_code == 409 and "li.wei@example.com" in dup.json()["detail"]
    bad = client.post("/api/users", headers=h, json={"email": "not-an-email", "password": "long-enough-pw",
                                                     "roles": ["operator"]})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("email")
    bad_role = client.post("/api/users", headers=h, json={"email": "a@example.com", "password": "long-enough-pw",
                                                          "roles": ["wizard"]})
    assert bad_role.status_code == 422 and "roles" in bad_role.json()["detail"]
    escalate = client.post("/api/users", headers=h, json={"email": "b@example.com", "password": "long-enough-pw",
                                                          "roles": ["platform_admin"]})
    assert escalate.status_code == 403 and "platform_admin" in escalate.json()["detail"]
    engineers = client.get("/api/users", headers=h, params={"role": "engineer"}).json()["items"]
    assert {u["id"] for u in engineers} == {uid, world.a.engineer.id}
    patched = client.patch(f"/api/users/{uid}", headers=h, json={"roles": ["operator"], "is_active": False})
    assert patched.status_code == 200 and patched.json()["roles"] == ["operator"]
    assert patched.json()["is_active"] is False
    assert client.delete(f"/api/users/{uid}", headers=h).status_code == 204
    assert client.get(f"/api/users/{uid}", headers=h).status_code == 404
    assert client.delete(f"/api/users/{world.a.admin.id}", headers=h).status_code == 409  # oneself


def test_enterprise_admin_cannot_edit_a_user_with_higher_roles(client, world: World, db: Session,
                                                                settings: Settings) -> None:
    boss = make_user(db, world.a.enterprise, Role.platform_admin)
    r = client.patch(f"/api/users/{boss.id}", headers=world.a.headers, json={"full_name": "x"})
    assert r.status_code == 403 and "platform_admin" in r.json()["detail"]
    engineer_headers = headers_for(settings, world.a.engineer)
    assert client.post("/api/users", headers=engineer_headers,
                       json={"email": "c@example.com", "password": "long-enough-pw",
                             "roles": ["operator"]}).status_code == 403


def test_engineer_sees_only_their_own_api_keys(client, world: World, settings: Settings) -> None:
    engineer_headers = headers_for(settings, world.a.engineer)
    mine = client.post("/api/api-keys", headers=engineer_headers, json={"name": "gateway"})
    assert mine.status_code == 201
    assert mine.json()["roles"] == ["engineer"]
    listed = client.get("/api/api-keys", headers=engineer_headers).json()["items"]
    assert [k["id"] for k in listed] == [mine.json()["id"]]
    assert client.get(f"/api/api-keys/{world.a.api_key.id}", headers=engineer_headers).status_code == 404
    admin_view = client.get("/api/api-keys", headers=world.a.headers).json()["items"]
    assert {k["id"] for k in admin_view} == {mine.json()["id"], world.a.api_key.id}
    renamed = client.patch(f"/api/api-keys/{mine.json()['id']}", headers=engineer_headers, json={"name": "gw-1"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "gw-1"


def test_audit_log_is_read_only_and_scoped(client, world: World) -> None:
    h = world.a.headers
    for method in ("POST", "PATCH", "DELETE", "PUT"):
        path = "/api/audit-events" if method == "POST" else f"/api/audit-events/{world.a.audit_event_id}"
        r = client.request(method, path, headers=h, json={})
        assert r.status_code == 405, (method, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    own = client.get("/api/audit-events", headers=h).json()["items"]
    assert {e["enterprise_id"] for e in own} == {world.a.enterprise.id}
    assert client.get(f"/api/audit-events/{world.b.audit_event_id}", headers=h).status_code == 404
    everyone = client.get("/api/audit-events", headers=world.platform_headers).json()["items"]
    assert {world.a.enterprise.id, world.b.enterprise.id} <= {e["enterprise_id"] for e in everyone}
    engineer_view = client.get("/api/audit-events", headers=headers_for_engineer(client, world))
    assert engineer_view.status_code == 403


def headers_for_engineer(client, world: World) -> dict[str, str]:  # type: ignore[no-untyped-def]
    from .builders import PASSWORD

    token = client.post("/api/auth/token", data={"username": world.a.engineer.email, "password": PASSWORD})
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


def test_audit_filters_by_action_actor_and_time(client, world: World) -> None:
    h = world.a.headers
    client.post("/api/sites", headers=h, json={"name": "Filtered"})
    creates = client.get("/api/audit-events", headers=h, params={"action": "create", "actor": world.a.admin.email})
    assert creates.status_code == 200
    assert creates.json()["items"] and all(e["action"] == "create" for e in creates.json()["items"])
    future = client.get("/api/audit-events", headers=h, params={"since": "2100-01-01T00:00:00Z"}).json()["items"]
    assert future == []


def test_only_platform_admins_set_tenant_limits(client, world: World) -> None:
    limits = {"maxPayloadSize": 32768, "rateLimits": {"telemetryMessages": "50:1,1000:60"}}
    r = client.patch(f"/api/enterprises/{world.a.enterprise.id}", headers=world.a.headers, json={"limits": limits})
    assert r.status_code == 403 and "limits" in r.json()["detail"]
    r = client.patch(f"/api/enterprises/{world.a.enterprise.id}", headers=world.platform_headers,
                     json={"limits": limits})
    assert r.status_code == 200, r.text
    assert r.json()["limits"] == limits
    bad = client.patch(f"/api/enterprises/{world.a.enterprise.id}", headers=world.platform_headers,
                       json={"limits": {"rateLimits": {"messages": "lots"}}})
    assert bad.status_code == 422 and "rateLimits" in bad.json()["detail"]


def test_memberships_are_managed_by_platform_admins_and_stewards(client, world: World) -> None:
    eco, ent = world.a.ecosystem.id, world.a.enterprise.id
    path = f"/api/ecosystems/{eco}/members/{ent}"
    r = client.put(path, headers=world.steward_headers, json={"role": "co_builder"})
    assert r.status_code == 200, r.text
    assert r.json() == {"ecosystem_id": eco, "enterprise_id": ent, "role": "co_builder"}
    # a steward cannot pull in an enterprise that is not a member
    outsider = f"/api/ecosystems/{eco}/members/{world.b.enterprise.id}"
    assert client.put(outsider, headers=world.steward_headers, json={"role": "member"}).status_code == 404
    assert client.put(outsider, headers=world.platform_headers, json={"role": "member"}).status_code == 200
    assert client.put(path, headers=world.a.headers, json={"role": "member"}).status_code == 403
    assert client.delete(outsider, headers=world.steward_headers).status_code == 204
    assert client.delete(outsider, headers=world.steward_headers).status_code == 404
    events = client.get("/api/audit-events", headers=world.platform_headers,
                        params={"entity_type": "ecosystem_membership"}).json()["items"]
    assert [e["action"] for e in events] == ["delete", "create", "update"]
