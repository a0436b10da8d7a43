"""Tenant isolation, walked over every route of the app: tenant B asking for any of tenant A's
objects gets 404 on GET/PATCH/PUT/DELETE/POST-actions, B's lists never show A's objects, and A's
objects survive B's attempts. Routes are discovered from app.routes, so every domain's routes are
covered; each needs a builder in tests/isolation_registry.py (see there)."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

from fastapi.routing import APIRoute
from sqlalchemy.orm import Session

from ecoplat.config import Settings
from ecoplat.tenancy.models import Role
from isolation_registry import BODIES, BUILDERS, EXEMPT, IsolationTenant, api_routes
from tenancy.builders import Tree, make_tree

TESTS = Path(__file__).parent
# Every role a tenant's people can have, so a missing permission (403) never hides a leak.
TENANT_ROLES = tuple(r for r in Role if r is not Role.platform_admin)


def _import_domain_builders() -> None:
    for path in sorted(TESTS.glob("*/builders.py")):
        if (path.parent / "__init__.py").exists():
            importlib.import_module(f"{path.parent.name}.builders")
        else:
            spec = importlib.util.spec_from_file_location(f"_isolation_builders_{path.parent.name}", path)
            assert spec and spec.loader
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # dataclasses look their module up while executing
            spec.loader.exec_module(module)


def _tenant(tree: Tree) -> IsolationTenant:
    return IsolationTenant(
        enterprise_id=tree.enterprise.id, admin_user_id=tree.admin.id,
        ids={"ecosystem": tree.ecosystem.id, "enterprise": tree.enterprise.id, "site": tree.site.id,
             "area": tree.area.id, "line": tree.line.id, "workstation": tree.workstation.id,
             "equipment": tree.equipment.id, "user": tree.engineer.id, "api_key": tree.api_key.id,
             "audit_event": tree.audit_event_id})


def _exempt(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") or path.startswith(p + "{") for p in EXEMPT)


def _prefix(path: str) -> str:
    return path.split("{", 1)[0].rstrip("/")


def _fill(route: APIRoute, object_id: int) -> str:
    path = route.path
    for param in route.dependant.path_params:
        annotation = getattr(param.field_info, "annotation", None)
        value: Any = object_id if annotation in (int, None) or param.type_ is int else "temperature"
        path = path.replace("{" + param.name + "}", str(value)).replace("{" + param.name + ":path}", str(value))
    return path


def _items(response: Any) -> list[dict[str, Any]] | None:
    if response.status_code != 200 or not response.headers.get("content-type", "").startswith("application/json"):
        return None
    body = response.json()
    if isinstance(body, dict) and isinstance(body.get("items"), list):
        return body["items"]
    return body if isinstance(body, list) else None


def test_tenant_b_never_sees_tenant_a(client, app, db: Session, settings: Settings) -> None:
    _import_domain_builders()
    a_tree = make_tree(db, settings, admin_roles=TENANT_ROLES)
    b_tree = make_tree(db, settings, admin_roles=TENANT_ROLES)
    a, b = _tenant(a_tree), _tenant(b_tree)
    routes = [r for r in api_routes(app) if r.path.startswith("/api/")]
    problems: list[str] = []
    a_ids: dict[str, int] = {}
    b_ids: dict[str, int] = {}

    def ids_for(prefix: str) -> tuple[int, int] | None:
        if prefix not in BUILDERS:
            return None
        if prefix not in a_ids:
            a_ids[prefix] = BUILDERS[prefix](db, a)
            b_ids[prefix] = BUILDERS[prefix](db, b)
            db.flush()
        return a_ids[prefix], b_ids[prefix]

    object_routes = [r for r in routes if "{" in r.path and not _exempt(r.path)]
    assert object_routes, "no object routes found; is the tenancy API mounted?"
    # Build every object first, so that a leaking DELETE cannot break a later builder.
    for route in routes:
        if not _exempt(route.path):
            ids_for(_prefix(route.path) if "{" in route.path else route.path.rstrip("/"))
    controls: list[tuple[str, APIRoute]] = []
    for route in object_routes:
        ids = ids_for(_prefix(route.path))
        if ids is None:
            problems.append(f"{sorted(route.methods)} {route.path}: no isolation builder for "
                            f"'{_prefix(route.path)}'; register one in tests/<domain>/builders.py "
                            "with isolation_registry.register (or exempt it, saying why)")
            continue
        url = _fill(route, ids[0])
        for method in sorted(route.methods - {"HEAD", "OPTIONS"}):
            body = BODIES.get(f"{method} {route.path}", {})
            kwargs: dict[str, Any] = {"json": body} if method in ("POST", "PUT", "PATCH") else {}
            r = client.request(method, url, headers=b_tree.headers, **kwargs)
            if r.status_code != 404:
                problems.append(f"{method} {url} with tenant B's token answered {r.status_code}, "
                                f"expected 404: {r.text[:200]}")
            elif not r.headers.get("content-type", "").startswith("application/problem+json"):
                problems.append(f"{method} {url}: 404 is not problem+json")
        if "GET" in route.methods and route.response_model is not None:
            controls.append((url, route))

    # A still sees every one of its objects (B's DELETEs removed nothing, and the builders made
    # real objects, so the 404s above were not trivially true).
    for url, route in controls:
        r = client.get(url, headers=a_tree.headers)
        if r.status_code != 200:
            problems.append(f"GET {url} with tenant A's own token answered {r.status_code} "
                            f"(builder for {_prefix(route.path)} or the route is wrong): {r.text[:200]}")

    list_routes = [r for r in routes if "{" not in r.path and "GET" in r.methods and not _exempt(r.path)]
    checked_lists = 0
    for route in list_routes:
        ids = ids_for(route.path.rstrip("/"))
        page_size = settings.page_size_max
        r_b = client.get(route.path, headers=b_tree.headers, params={"limit": page_size})
        if r_b.status_code >= 500:
            problems.append(f"GET {route.path} with tenant B's token answered {r_b.status_code}")
            continue
        items = _items(r_b)
        if items is None or ids is None:
            continue
        checked_lists += 1
        seen = {item.get("id") for item in items if isinstance(item, dict)}
        if ids[0] in seen:
            problems.append(f"GET {route.path}: tenant B's list shows tenant A's object {ids[0]}")
        leaked = [i for i in items if isinstance(i, dict) and i.get("enterprise_id") == a.enterprise_id]
        if leaked:
            problems.append(f"GET {route.path}: tenant B's list shows {len(leaked)} row(s) of enterprise A")
        a_items = _items(client.get(route.path, headers=a_tree.headers, params={"limit": page_size})) or []
        if ids[0] not in {i.get("id") for i in a_items if isinstance(i, dict)}:
            problems.append(f"GET {route.path}: tenant A's own list lacks its object {ids[0]}")
    assert checked_lists >= 10, f"only {checked_lists} list routes were checked"
    assert not problems, "Tenant isolation problems:\n  " + "\n  ".join(problems)


def test_filters_by_another_tenants_parent_find_nothing(client, db: Session, settings: Settings) -> None:
    a = make_tree(db, settings)
    b = make_tree(db, settings)
    for path, param, value in (("/api/areas", "site_id", a.site.id), ("/api/lines", "area_id", a.area.id),
                               ("/api/workstations", "line_id", a.line.id),
                               ("/api/equipment", "site_id", a.site.id),
                               ("/api/sites", "enterprise_id", a.enterprise.id),
                               ("/api/users", "enterprise_id", a.enterprise.id),
                               ("/api/enterprises", "ecosystem_id", a.ecosystem.id)):
        r = client.get(path, headers=b.headers, params={param: value})
        assert r.status_code == 200, (path, r.text)
        assert r.json()["items"] == [], (path, param)
        own = client.get(path, headers=a.headers, params={param: value})
        assert own.json()["items"], (path, param)


def test_creating_under_another_tenants_parent_answers_404(client, db: Session, settings: Settings) -> None:
    a = make_tree(db, settings)
    b = make_tree(db, settings)
    for path, body in (("/api/areas", {"site_id": a.site.id, "name": "x"}),
                       ("/api/lines", {"area_id": a.area.id, "name": "x"}),
                       ("/api/workstations", {"line_id": a.line.id, "name": "x"}),
                       ("/api/equipment", {"site_id": a.site.id, "name": "x"}),
                       ("/api/equipment", {"site_id": b.site.id, "area_id": a.area.id, "name": "x"}),
                       ("/api/sites", {"name": "x", "enterprise_id": a.enterprise.id}),
                       ("/api/users", {"email": "x@example.com", "password": "long-enough-pw",
                                       "roles": ["operator"], "enterprise_id": a.enterprise.id})):
        r = client.post(path, headers=b.headers, json=body)
        assert r.status_code == 404, (path, body, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")


def test_isolation_registry_documents_its_use() -> None:
    import isolation_registry

    assert "register(" in inspect.getdoc(isolation_registry)  # type: ignore[operator]
