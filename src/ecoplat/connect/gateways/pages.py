"""Connector pages: the tenant's OPC UA / Modbus connectors with their live status, a form to
add one to a device (configuration as JSON, validated by the connector type and shown next to
the field), and start/stop/delete. Every read and write goes through connect.gateways.service."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from ecoplat.connect.gateways import service
from ecoplat.connect.gateways.base import connector_types
from ecoplat.connect.gateways.schemas import ConnectorIn
from ecoplat.connect.models import Device
from ecoplat.db import DbSession
from ecoplat.errors import NotFound, ProblemError
from ecoplat.pagination import PageParams
from ecoplat.tenancy.auth import Principal
from ecoplat.web.auth import PagePrincipal, page_router
from ecoplat.web.templating import N_, NAV, NavItem, render, translate

router = page_router()

if not any(item.path == "/connectors" for item in NAV):
    NAV.append(NavItem("/connectors", N_("Connectors"), "devices:read", order=35))

STATE_LABELS = {"stopped": N_("stopped"), "starting": N_("starting"), "online": N_("online"),
                "unavailable": N_("unavailable")}
MAX_ID = 2_147_483_647

# What the form starts from for each type: a small working example to edit.
EXAMPLES: dict[str, dict[str, Any]] = {
    "modbus": {"host": "192.168.1.10", "port": 502, "unit_id": 1, "poll_interval_ms": 1000,
               "registers": [{"key": "level_pct", "table": "holding", "address": 0, "data_type": "float32",
                              "byte_order": "ABCD", "scale": 1.0, "offset": 0.0}]},
    "opcua": {"endpoint": "opc.tcp://192.168.1.20:4840", "publishing_interval_ms": 1000,
              "nodes": [{"node_id": "ns=2;s=E101.CellVoltage", "key": "cell_voltage_v"}]},
}


def _ip(request: Request) -> str:
    return request.client.host if request.client else ""


def _devices(db: Session, principal: Principal) -> list[tuple[str, str]]:
    rows = db.execute(select(Device.id, Device.name).where(Device.enterprise_id == principal.enterprise_id)
                      .order_by(Device.name).limit(1000)).all()
    return [(str(i), name) for i, name in rows]


def _rows(request: Request, db: Session, principal: Principal, device_id: int | None) -> list[dict[str, Any]]:
    connectors, _ = service.list_connectors(db, actor=principal, page=PageParams(limit=500), device_id=device_id)
    names = dict(db.execute(select(Device.id, Device.name).where(
        Device.id.in_({c.device_id for c in connectors}))).all()) if connectors else {}
    manager = getattr(request.app.state, "connectors", None)
    out = []
    for c in connectors:
        live = manager.status(c.id) if manager is not None else None
        out.append({
            "id": c.id, "name": c.name, "type": c.type, "device_id": c.device_id,
            "device_name": names.get(c.device_id, f"#{c.device_id}"), "enabled": c.enabled,
            "state": live.state.value if live else c.status,
            "last_error": live.last_error if live else c.last_error,
            "last_success_at": (live.last_success_at if live else None) or c.last_success_at,
            "points_total": live.points_total if live else None,
            "config": json.dumps(service.masked_config(c.config or {}), ensure_ascii=False, indent=1),
        })
    return out


def _page(request: Request, db: Session, principal: Principal, *, device_id: int | None = None,
          values: dict[str, Any] | None = None, errors: dict[str, str] | None = None,
          form_error: str | None = None, status_code: int = 200) -> HTMLResponse:
    types = connector_types()
    default_type = (values or {}).get("type") or "modbus"
    defaults = {"type": default_type, "device_id": str(device_id or ""), "enabled": True,
                "config": json.dumps(EXAMPLES.get(default_type, {}), indent=2)}
    return render(request, "connect/connectors.html", {
        "rows": _rows(request, db, principal, device_id), "device_id": device_id,
        "types": [(name, cls.title) for name, cls in sorted(types.items())],
        "examples": {k: json.dumps(v, indent=2) for k, v in EXAMPLES.items()},
        "devices": _devices(db, principal), "state_labels": STATE_LABELS,
        "can_write": principal.can("devices:write"), "values": defaults | (values or {}),
        "errors": errors or {}, "form_error": form_error,
    }, status_code=status_code)


def _check_id(value: int) -> int:
    if not 1 <= value <= MAX_ID:
        raise NotFound("connector", value)
    return value


@router.get("/connectors", response_class=HTMLResponse)
def connectors_page(request: Request, db: DbSession, principal: PagePrincipal,
                    device_id: int | None = Query(None, ge=1, le=MAX_ID)) -> HTMLResponse:
    principal.require("devices:read")
    return _page(request, db, principal, device_id=device_id)


@router.get("/connectors/rows", response_class=HTMLResponse)
def connectors_rows(request: Request, db: DbSession, principal: PagePrincipal,
                    device_id: int | None = Query(None, ge=1, le=MAX_ID)) -> HTMLResponse:
    """The table body alone, polled by HTMX so states change on screen without a reload."""
    principal.require("devices:read")
    return render(request, "connect/_connector_rows.html", {
        "rows": _rows(request, db, principal, device_id), "state_labels": STATE_LABELS,
        "can_write": principal.can("devices:write")})


def _field_of(error_field: str) -> str:
    head = error_field.split(".", 1)[0]
    return head if head in ("name", "device_id", "type", "config") else "config"


@router.post("/connectors", response_class=HTMLResponse)
async def connectors_create(request: Request, db: DbSession, principal: PagePrincipal) -> Response:
    principal.require("devices:write")
    form = await request.form()
    values = {k: str(form.get(k, "")).strip() for k in ("name", "device_id", "type", "config")}
    values["enabled"] = form.get("enabled") is not None
    try:
        config = json.loads(values["config"] or "{}")
    except json.JSONDecodeError as e:
        return _page(request, db, principal, values=values, status_code=422, errors={
            "config": translate(request, "Not valid JSON: %(error)s", error=str(e))})
    try:
        data = ConnectorIn.model_validate({"name": values["name"], "device_id": values["device_id"] or None,
                                           "type": values["type"], "config": config,
                                           "enabled": values["enabled"]})
    except ValidationError as e:
        errors = {_field_of(str(err["loc"][0])): err["msg"] for err in e.errors() if err.get("loc")}
        return _page(request, db, principal, values=values, errors=errors, status_code=422)
    try:
        row = service.create_connector(db, actor=principal, data=data, ip=_ip(request))
    except ProblemError as e:
        errors: dict[str, str] = {}
        for err in e.errors or []:
            errors.setdefault(_field_of(str(err.get("field", ""))), f"{err.get('field')}: {err.get('message')}")
        if not errors and e.status == 404:
            errors["device_id"] = e.detail
        return _page(request, db, principal, values=values, errors=errors, status_code=e.status,
                     form_error=None if errors else e.detail)
    manager = getattr(request.app.state, "connectors", None)
    if manager is not None:
        manager.changed_soon()
    return RedirectResponse(f"/connectors?device_id={row.device_id}", status_code=303)


@router.post("/connectors/{connector_id}/{action}")
def connectors_action(request: Request, db: DbSession, principal: PagePrincipal, connector_id: int,
                      action: str) -> Response:
    principal.require("devices:write")
    connector_id = _check_id(connector_id)
    manager = getattr(request.app.state, "connectors", None)
    if action in ("start", "stop"):
        row = service.set_enabled(db, actor=principal, connector_id=connector_id, enabled=action == "start",
                                  ip=_ip(request))
        if manager is not None:
            manager.changed_soon()
        return RedirectResponse(f"/connectors?device_id={row.device_id}", status_code=303)
    if action == "delete":
        service.delete_connector(db, actor=principal, connector_id=connector_id, ip=_ip(request))
        if manager is not None:
            manager.changed_soon()
        return RedirectResponse("/connectors", status_code=303)
    raise NotFound("action", action)
