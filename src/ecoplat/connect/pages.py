"""Device pages: the device list (search, status filter, create, claim) and the device page
(status, counters, errors by reason, attributes, token rotation, latest values and a live chart
fed by the telemetry SSE stream). Every read and write goes through connect.service."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from ecoplat.connect import service
from ecoplat.connect.models import AttributeScope, DeviceProfile
from ecoplat.connect.schemas import DeviceIn, DeviceStatus, DeviceUpdate, ProvisionIn
from ecoplat.db import DbSession
from ecoplat.errors import Conflict, NotFound, ProblemError, Unprocessable
from ecoplat.pagination import PageParams
from ecoplat.tenancy import service as tenancy
from ecoplat.tenancy.auth import Principal
from ecoplat.web.auth import PagePrincipal, page_router
from ecoplat.web.templating import N_, NAV, NavItem, render, translate

router = page_router()

if not any(item.path == "/devices" for item in NAV):
    NAV.append(NavItem("/devices", N_("Devices"), "devices:read", order=30))

STATUS_LABELS = {"online": N_("online"), "offline": N_("offline")}
REASON_LABELS = {
    "malformed_json": N_("Malformed JSON"), "not_an_object": N_("Not an object"), "wrong_type": N_("Wrong type"),
    "non_finite": N_("Not a finite number"), "bad_ts": N_("Bad timestamp"), "payload_too_large": N_("Payload too large"),
    "unknown_token": N_("Unknown token"), "revoked_token": N_("Revoked token"),
    "topic_not_allowed": N_("Topic not allowed"), "empty": N_("Empty payload"),
}
PAGE_LIMIT = 50
MAX_ID = 2_147_483_647


def _ip(request: Request) -> str:
    return request.client.host if request.client else ""


def _check_id(device_id: int) -> int:
    if not 1 <= device_id <= MAX_ID:
        raise NotFound("device", device_id)
    return device_id


def _profiles(db: Session, principal: Principal) -> list[tuple[str, str]]:
    rows = db.execute(select(DeviceProfile.id, DeviceProfile.name)
                      .where(DeviceProfile.enterprise_id == principal.enterprise_id)
                      .order_by(DeviceProfile.name)).all()
    return [(str(pid), name) for pid, name in rows]


def _list_page(request: Request, db: Session, principal: Principal, *, q: str = "", status: str = "",
               cursor: str | None = None, values: dict[str, Any] | None = None, errors: dict[str, str] | None = None,
               form_error: str | None = None, claim_error: str | None = None, provision_error: str | None = None,
               claim_codes: dict[int, str] | None = None, status_code: int = 200) -> HTMLResponse:
    filters = service.DeviceFilters(q=q or None, status=DeviceStatus(status) if status in ("online", "offline") else None)
    rows, next_cursor = service.list_devices(db, actor=principal, filters=filters,
                                             page=PageParams(limit=PAGE_LIMIT, cursor=cursor))
    can_provision = principal.can("devices:provision")
    provisioned = []
    if can_provision:
        unclaimed, _ = service.list_provisioned(db, actor=principal, page=PageParams(limit=PAGE_LIMIT))
        provisioned = service.to_out(db, unclaimed)
    return render(request, "connect/devices.html", {
        "can_provision": can_provision, "provisioned": provisioned,
        "claim_codes": claim_codes or {}, "provision_error": provision_error,
        "devices": service.to_out(db, rows), "next_cursor": next_cursor, "q": q, "status": status,
        "status_labels": STATUS_LABELS, "profiles": [("", "—")] + _profiles(db, principal),
        "can_write": principal.can("devices:write"), "values": values or {}, "errors": errors or {},
        "form_error": form_error, "claim_error": claim_error,
    }, status_code=status_code)


@router.get("/devices", response_class=HTMLResponse)
def devices_page(request: Request, db: DbSession, principal: PagePrincipal,
                 q: str = Query("", max_length=200), status: str = Query("", max_length=10),
                 cursor: str | None = Query(None, max_length=512)) -> HTMLResponse:
    principal.require("devices:read")
    return _list_page(request, db, principal, q=q, status=status, cursor=cursor)


@router.post("/devices", response_class=HTMLResponse)
async def devices_create(request: Request, db: DbSession, principal: PagePrincipal) -> Response:
    principal.require("devices:write")
    form = await request.form()
    values = {"name": str(form.get("name", "")).strip(), "type": str(form.get("type", "")).strip() or "default",
              "profile_id": str(form.get("profile_id", "")).strip()}
    try:
        data = DeviceIn.model_validate({**values, "profile_id": values["profile_id"] or None})
    except ValidationError as e:
        errors = {str(err["loc"][0]): err["msg"] for err in e.errors() if err.get("loc")}
        return _list_page(request, db, principal, values=values, errors=errors, status_code=422)
    try:
        device, token = service.create_device(db, actor=principal, data=data, ip=_ip(request))
    except Conflict:
        return _list_page(request, db, principal, values=values, status_code=409, errors={
            "name": translate(request, "A device with this name already exists.")})
    except ProblemError as e:
        return _list_page(request, db, principal, values=values, status_code=e.status, form_error=e.detail)
    return _device_page(request, db, principal, device.id, new_token=token, status_code=201)


@router.post("/devices/claim", response_class=HTMLResponse)
async def devices_claim(request: Request, db: DbSession, principal: PagePrincipal) -> Response:
    principal.require("devices:write")
    form = await request.form()
    code = str(form.get("claim_code", "")).strip()
    if len(code) < 4:
        return _list_page(request, db, principal, status_code=422,
                          claim_error=translate(request, "Enter the claim code printed on the device."))
    try:
        device, token = service.claim_device(db, actor=principal, claim_code=code, ip=_ip(request))
    except ProblemError as e:
        return _list_page(request, db, principal, status_code=e.status, claim_error=e.detail)
    _credentials_changed(request, device.id, device.enterprise_id)
    return _device_page(request, db, principal, device.id, new_token=token)


@router.post("/devices/provision", response_class=HTMLResponse)
async def devices_provision(request: Request, db: DbSession, principal: PagePrincipal) -> Response:
    """A steward pre-creates a device; its claim code is shown once, to hand to the claimer."""
    principal.require("devices:provision")
    form = await request.form()
    try:
        data = ProvisionIn.model_validate({"name": str(form.get("name", "")).strip(),
                                           "type": str(form.get("type", "")).strip() or "default"})
    except ValidationError:
        return _list_page(request, db, principal, status_code=422,
                          provision_error=translate(request, "Give the device a name."))
    device, code = service.provision_device(db, actor=principal, data=data, ip=_ip(request))
    return _list_page(request, db, principal, claim_codes={device.id: code}, status_code=201)


def _equipment_options(db: Session, principal: Principal) -> list[tuple[str, str]]:
    if not principal.can("plant:read"):
        return []
    rows, _ = tenancy.list_equipment(db, actor=principal, page=PageParams(limit=500))
    return [(str(e.id), f"{e.tag} {e.name}".strip()) for e in rows]


def _device_page(request: Request, db: Session, principal: Principal, device_id: int, *,
                 new_token: str | None = None, notice: str | None = None, status_code: int = 200,
                 errors: dict[str, str] | None = None, values: dict[str, Any] | None = None) -> HTMLResponse:
    device = service.get_device(db, actor=principal, device_id=_check_id(device_id))
    out = service.to_out(db, [device])[0]
    profile = db.get(DeviceProfile, device.profile_id) if device.profile_id else None
    _, rejects, recent = service.device_errors(db, actor=principal, device_id=device.id, recent_limit=20)
    attributes = service.list_attributes(db, actor=principal, device_id=device.id)
    store = getattr(request.app.state, "telemetry", None)
    samples = sorted(store.latest(device.id).items()) if store is not None else []
    latest = [(k, s.value, datetime.fromtimestamp(s.ts / 1000, UTC), s.ts) for k, s in samples]
    key_defs = {k["key"]: k for k in (profile.telemetry_keys if profile else [])}
    return render(request, "connect/device.html", {
        "device": out, "profile": profile, "rejects": rejects, "recent": recent,
        "attributes": attributes, "latest": latest, "key_defs": key_defs, "new_token": new_token,
        "notice": notice, "status_labels": STATUS_LABELS, "reason_labels": REASON_LABELS,
        "can_write": principal.can("devices:write") and device.enterprise_id is not None,
        "chart_keys": [k for k, s in samples if isinstance(s.value, int | float) and not isinstance(s.value, bool)],
        "scopes": [s.value for s in AttributeScope],
        "profile_options": [("", "—")] + _profiles(db, principal),
        "equipment_options": [("", "—")] + _equipment_options(db, principal),
        "errors": errors or {},
        "values": values if values is not None else {
            "label": device.label, "profile_id": str(device.profile_id or ""),
            "equipment_id": str(device.equipment_id or "")},
    }, status_code=status_code)


@router.get("/devices/{device_id}", response_class=HTMLResponse)
def device_page(request: Request, db: DbSession, principal: PagePrincipal, device_id: int,
                saved: str | None = Query(None, max_length=1)) -> HTMLResponse:
    principal.require("devices:read")
    notice = translate(request, "Saved.") if saved else None
    return _device_page(request, db, principal, device_id, notice=notice)


def _credentials_changed(request: Request, device_id: int, enterprise_id: int | None) -> None:
    request.app.state.events.publish(f"credentials.{enterprise_id or 0}.{device_id}", {"device_id": device_id})
    pipeline = getattr(request.app.state, "ingest", None)
    if pipeline is not None:
        pipeline.invalidate_device(device_id)


@router.post("/devices/{device_id}", response_class=HTMLResponse)
async def device_update(request: Request, db: DbSession, principal: PagePrincipal, device_id: int) -> Response:
    """The device's settings: label, profile and the equipment it measures."""
    form = await request.form()
    values = {k: str(form.get(k, "")).strip() for k in ("label", "profile_id", "equipment_id")}
    try:
        data = DeviceUpdate.model_validate({"label": values["label"], "profile_id": values["profile_id"] or None,
                                            "equipment_id": values["equipment_id"] or None})
    except ValidationError as e:
        errors = {str(err["loc"][0]): err["msg"] for err in e.errors() if err.get("loc")}
        return _device_page(request, db, principal, device_id, errors=errors, values=values, status_code=422)
    try:
        service.update_device(db, actor=principal, device_id=_check_id(device_id), data=data, ip=_ip(request))
    except Unprocessable as e:
        field = (e.errors or [{}])[0].get("field", "label")
        return _device_page(request, db, principal, device_id, errors={field: e.detail}, values=values,
                            status_code=422)
    return RedirectResponse(f"/devices/{device_id}?saved=1", status_code=303)


@router.post("/devices/{device_id}/token/rotate", response_class=HTMLResponse)
def device_rotate(request: Request, db: DbSession, principal: PagePrincipal, device_id: int) -> HTMLResponse:
    device, token = service.rotate_token(db, actor=principal, device_id=_check_id(device_id), ip=_ip(request))
    _credentials_changed(request, device.id, device.enterprise_id)
    return _device_page(request, db, principal, device.id, new_token=token)


@router.post("/devices/{device_id}/token/revoke")
def device_revoke(request: Request, db: DbSession, principal: PagePrincipal, device_id: int) -> Response:
    device = service.revoke_token(db, actor=principal, device_id=_check_id(device_id), ip=_ip(request))
    _credentials_changed(request, device.id, device.enterprise_id)
    return RedirectResponse(f"/devices/{device.id}", status_code=303)


# Gateways (engineer "gateways"): the connectors page at /connectors.
from ecoplat.connect.gateways.pages import router as connectors_pages  # noqa: E402

router.include_router(connectors_pages)
