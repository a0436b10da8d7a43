"""How to build one object of each kind for tests/test_isolation.py.

The isolation test discovers every `/api/...` route with a path parameter from `app.routes`,
builds tenant A's objects, and asks for them with tenant B's token, expecting 404. It needs to
know how to build one object per route prefix; a route with no builder fails the test, so
nobody forgets. Each domain registers its builders in `tests/<domain>/builders.py` (imported by
the isolation test):

    from isolation_registry import register

    @register("/api/devices")
    def _device(db: Session, tenant: IsolationTenant) -> int:
        return make_device(db, tenant.enterprise_id).id      # an object of tenant's enterprise

The key is the route path up to its first "{", without the trailing slash, e.g. "/api/devices"
for "/api/devices/{device_id}/rpc". Routes that are not tenant-scoped by the caller's token
(e.g. the ThingsBoard device API authenticated by a device token in the path) are exempted with
`exempt("/api/v1", "why")`. If a POST/PATCH/PUT needs a body to get past validation, give one
with `register(..., bodies={"POST /api/devices/{device_id}/rpc": {"method": "x", "params": {}}})`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session


@dataclass
class IsolationTenant:
    """One enterprise with a full tenancy tree; `ids` holds its objects by kind
    (site, area, line, workstation, equipment, user, api_key, audit_event, ecosystem)."""

    enterprise_id: int
    admin_user_id: int
    ids: dict[str, int] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)  # builders may memoise objects here


Builder = Callable[[Session, IsolationTenant], int]

BUILDERS: dict[str, Builder] = {}
EXEMPT: dict[str, str] = {}
BODIES: dict[str, Any] = {}


def register(prefix: str, *, bodies: dict[str, Any] | None = None) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        BUILDERS[prefix.rstrip("/")] = fn
        BODIES.update(bodies or {})
        return fn

    return deco


def exempt(prefix: str, reason: str) -> None:
    EXEMPT[prefix.rstrip("/")] = reason


def api_routes(app: Any) -> list[Any]:
    """Every APIRoute of the app with its full path. FastAPI 0.16x keeps included routers as lazy
    branches in app.routes; older versions list the routes flat."""
    from fastapi.routing import APIRoute

    try:
        from fastapi.routing import _iter_included_route_candidates as flatten
    except ImportError:  # older FastAPI: app.routes is already flat
        return [r for r in app.routes if isinstance(r, APIRoute)]
    return [r for r in flatten(app.routes) if isinstance(r, APIRoute)]
