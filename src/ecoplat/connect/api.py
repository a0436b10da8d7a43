"""Thin routes over connect.service: device profiles, devices, tokens, attributes, RPC, errors,
provisioning and claiming; the ThingsBoard HTTP device API is mounted from connect.http."""

from __future__ import annotations

import logging
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Body, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from ecoplat.api_common import ObjectId, client_ip
from ecoplat.connect import service
from ecoplat.connect.http import router as device_http_router
from ecoplat.connect.models import AttributeScope
from ecoplat.connect.schemas import (
    AttributeOut,
    ClaimIn,
    CredentialsOut,
    DeviceErrorsOut,
    DeviceIn,
    DeviceOut,
    DeviceStatus,
    DeviceUpdate,
    DeviceWithToken,
    ProfileIn,
    ProfileOut,
    ProfileUpdate,
    ProvisionIn,
    ProvisionOut,
    RecentErrorOut,
    RejectOut,
    RpcIn,
    RpcOut,
    TokenOut,
)
from ecoplat.db import DbSession
from ecoplat.errors import Conflict, Forbidden, ProblemError
from ecoplat.pagination import Page, PageQuery
from ecoplat.tenancy import audit
from ecoplat.tenancy.auth import Principal, require

log = logging.getLogger(__name__)

router = APIRouter()
profiles = APIRouter(prefix="/api/device-profiles", tags=["devices"])
devices = APIRouter(prefix="/api/devices", tags=["devices"])

CanRead = Annotated[Principal, require("devices:read")]
CanWrite = Annotated[Principal, require("devices:write")]
CanProvision = Annotated[Principal, require("devices:provision")]


class DeviceTimeout(ProblemError):
    # 408, as ThingsBoard answers a server-side RPC the device did not answer in time.
    status, type_slug = 408, "device-timeout"


class ServiceUnavailable(ProblemError):
    status, type_slug = 503, "service-unavailable"


def _credentials_changed(request: Request, device_id: int, enterprise_id: int | None) -> None:
    """Tells every ingest process (through the event bus) to forget the device's cached token."""
    request.app.state.events.publish(f"credentials.{enterprise_id or 0}.{device_id}", {"device_id": device_id})
    pipeline = getattr(request.app.state, "ingest", None)
    if pipeline is not None:
        pipeline.invalidate_device(device_id)


def _one(db: DbSession, device: Any) -> DeviceOut:
    return service.to_out(db, [device])[0]


# ---- profiles ---------------------------------------------------------------------------------


@profiles.get("", response_model=Page[ProfileOut])
def list_profiles(db: DbSession, actor: CanRead, page: PageQuery) -> Page[ProfileOut]:
    rows, cursor = service.list_profiles(db, actor=actor, page=page)
    return Page(items=[ProfileOut.model_validate(r) for r in rows], next_cursor=cursor)


@profiles.post("", response_model=ProfileOut, status_code=201)
def create_profile(db: DbSession, actor: CanWrite, data: ProfileIn, request: Request) -> ProfileOut:
    return ProfileOut.model_validate(service.create_profile(db, actor=actor, data=data, ip=client_ip(request)))


@profiles.get("/{profile_id}", response_model=ProfileOut)
def get_profile(db: DbSession, actor: CanRead, profile_id: ObjectId) -> ProfileOut:
    return ProfileOut.model_validate(service.get_profile(db, actor=actor, profile_id=profile_id))


@profiles.patch("/{profile_id}", response_model=ProfileOut)
def update_profile(db: DbSession, actor: CanWrite, profile_id: ObjectId, data: ProfileUpdate,
                   request: Request) -> ProfileOut:
    return ProfileOut.model_validate(service.update_profile(db, actor=actor, profile_id=profile_id, data=data,
                                                            ip=client_ip(request)))


@profiles.delete("/{profile_id}", status_code=204)
def delete_profile(db: DbSession, actor: CanWrite, profile_id: ObjectId, request: Request) -> Response:
    service.delete_profile(db, actor=actor, profile_id=profile_id, ip=client_ip(request))
    return Response(status_code=204)


# ---- provisioning (before /{device_id} so the literal paths win) ------------------------------


@devices.post("/provision", response_model=ProvisionOut, status_code=201)
def provision(db: DbSession, actor: CanProvision, data: ProvisionIn, request: Request) -> ProvisionOut:
    device, code = service.provision_device(db, actor=actor, data=data, ip=client_ip(request))
    assert device.claim_expires_at is not None
    return ProvisionOut(device=_one(db, device), claim_code=code, claim_expires_at=device.claim_expires_at)


@devices.get("/provisioned", response_model=Page[DeviceOut])
def list_provisioned(db: DbSession, actor: CanProvision, page: PageQuery) -> Page[DeviceOut]:
    rows, cursor = service.list_provisioned(db, actor=actor, page=page)
    return Page(items=service.to_out(db, rows), next_cursor=cursor)


@devices.post("/claim", response_model=DeviceWithToken)
def claim(db: DbSession, actor: CanWrite, data: ClaimIn, request: Request) -> DeviceWithToken:
    device, token = service.claim_device(db, actor=actor, claim_code=data.claim_code, ip=client_ip(request))
    _credentials_changed(request, device.id, device.enterprise_id)
    return DeviceWithToken(**_one(db, device).model_dump(), access_token=token)


@devices.get("/unknown-sender-rejects", response_model=list[RejectOut])
async def unknown_sender_rejects(actor: CanRead, request: Request) -> list[RejectOut]:
    """Messages whose token matched no device, counted per reason (platform admins only: the
    senders belong to no enterprise)."""
    if not actor.is_platform_admin:
        raise Forbidden("Only platform administrators see messages from unknown senders.")
    pipeline = getattr(request.app.state, "ingest", None)

    def _read() -> list[RejectOut]:
        if pipeline is not None:
            pipeline.flush_rejects()
        with request.app.state.db.session() as db:
            return [RejectOut(reason=r.reason, count=r.count, last_detail=r.last_detail, last_at=r.last_at)
                    for r in service.unknown_sender_rejects(db, actor=actor)]

    return await run_in_threadpool(_read)


# ---- devices ----------------------------------------------------------------------------------


@devices.get("", response_model=Page[DeviceOut])
def list_devices(
    db: DbSession, actor: CanRead, page: PageQuery,
    profile_id: Annotated[int | None, Query(ge=1, le=2_147_483_647)] = None,
    equipment_id: Annotated[int | None, Query(ge=1, le=2_147_483_647)] = None,
    status: DeviceStatus | None = None,
    is_gateway: bool | None = None,
    gateway_id: Annotated[int | None, Query(ge=1, le=2_147_483_647)] = None,
    q: Annotated[str | None, Query(max_length=200, description="Text to find in the device name.")] = None,
) -> Page[DeviceOut]:
    filters = service.DeviceFilters(profile_id=profile_id, equipment_id=equipment_id, status=status,
                                    is_gateway=is_gateway, gateway_id=gateway_id, q=q)
    rows, cursor = service.list_devices(db, actor=actor, filters=filters, page=page)
    return Page(items=service.to_out(db, rows), next_cursor=cursor)


@devices.post("", response_model=DeviceWithToken, status_code=201)
def create_device(db: DbSession, actor: CanWrite, data: DeviceIn, request: Request) -> DeviceWithToken:
    device, token = service.create_device(db, actor=actor, data=data, ip=client_ip(request))
    return DeviceWithToken(**_one(db, device).model_dump(), access_token=token)


@devices.get("/{device_id}", response_model=DeviceOut)
def get_device(db: DbSession, actor: CanRead, device_id: ObjectId) -> DeviceOut:
    return _one(db, service.get_device(db, actor=actor, device_id=device_id))


@devices.patch("/{device_id}", response_model=DeviceOut)
def update_device(db: DbSession, actor: CanWrite, device_id: ObjectId, data: DeviceUpdate,
                  request: Request) -> DeviceOut:
    device = service.update_device(db, actor=actor, device_id=device_id, data=data, ip=client_ip(request))
    if data.model_fields_set & {"profile_id", "name", "equipment_id"}:
        # Rules attach by profile and alarms name the device: let the rule engine look it up again.
        _credentials_changed(request, device_id, device.enterprise_id)
    return _one(db, device)


@devices.delete("/{device_id}", status_code=204)
def delete_device(db: DbSession, actor: CanRead, device_id: ObjectId, request: Request,
                  background: BackgroundTasks) -> Response:
    device = service.delete_device(db, actor=actor, device_id=device_id, ip=client_ip(request))
    _credentials_changed(request, device_id, device.enterprise_id)
    # Its telemetry history goes too, once the delete has committed (background tasks run after
    # the session's commit): points, rollups and latest values of a device that is gone.
    background.add_task(_delete_history, request.app, device_id)
    return Response(status_code=204)


def _delete_history(app: Any, device_id: int) -> None:
    from ecoplat.telemetry.store import store_for

    try:
        deleted = store_for(app).delete_device(device_id)
    except Exception:
        log.exception("deleting the telemetry of deleted device %s failed (retention removes it later)", device_id)
        return
    log.info("deleted device %s: %d stored points deleted with it", device_id, deleted)


@devices.get("/{device_id}/credentials", response_model=CredentialsOut)
def credentials(db: DbSession, actor: CanRead, device_id: ObjectId) -> CredentialsOut:
    device = service.get_device(db, actor=actor, device_id=device_id)
    return CredentialsOut(device_id=device.id, token_prefix=device.token_prefix, revoked=device.token_revoked)


@devices.post("/{device_id}/token/rotate", response_model=TokenOut)
def rotate_token(db: DbSession, actor: CanWrite, device_id: ObjectId, request: Request) -> TokenOut:
    device, token = service.rotate_token(db, actor=actor, device_id=device_id, ip=client_ip(request))
    _credentials_changed(request, device.id, device.enterprise_id)
    return TokenOut(device_id=device.id, access_token=token, token_prefix=device.token_prefix)


@devices.post("/{device_id}/token/revoke", response_model=CredentialsOut)
def revoke_token(db: DbSession, actor: CanWrite, device_id: ObjectId, request: Request) -> CredentialsOut:
    device = service.revoke_token(db, actor=actor, device_id=device_id, ip=client_ip(request))
    _credentials_changed(request, device.id, device.enterprise_id)
    return CredentialsOut(device_id=device.id, token_prefix=device.token_prefix, revoked=True)


@devices.get("/{device_id}/attributes", response_model=list[AttributeOut])
def list_attributes(db: DbSession, actor: CanRead, device_id: ObjectId,
                    scope: AttributeScope | None = None) -> list[AttributeOut]:
    rows = service.list_attributes(db, actor=actor, device_id=device_id, scope=scope)
    return [AttributeOut(scope=r.scope, key=r.key, value=r.value, updated_at=r.updated_at) for r in rows]


@devices.post("/{device_id}/attributes", response_model=list[AttributeOut])
def set_attributes(db: DbSession, actor: CanWrite, device_id: ObjectId, request: Request,
                   values: Annotated[dict[str, Any], Body(description="{key: JSON value}")],
                   scope: AttributeScope = AttributeScope.server) -> list[AttributeOut]:
    device = service.set_attributes(db, actor=actor, device_id=device_id, scope=scope, values=values,
                                    ip=client_ip(request))
    if scope == AttributeScope.shared:
        # The MQTT transport pushes shared attribute updates to the device (v1/devices/me/attributes).
        request.app.state.events.publish(f"attributes.{device.enterprise_id}.{device.id}",
                                         {"device_id": device.id, "values": values})
    rows = service.list_attributes(db, actor=actor, device_id=device_id, scope=scope)
    return [AttributeOut(scope=r.scope, key=r.key, value=r.value, updated_at=r.updated_at) for r in rows]


@devices.delete("/{device_id}/attributes", status_code=204)
def delete_attributes(db: DbSession, actor: CanWrite, device_id: ObjectId, request: Request,
                      scope: AttributeScope = AttributeScope.server,
                      keys: Annotated[str, Query(max_length=4000, description="Comma-separated keys.")] = "",
                      ) -> Response:
    wanted = [k.strip() for k in keys.split(",") if k.strip()]
    service.delete_attributes(db, actor=actor, device_id=device_id, scope=scope, keys=wanted, ip=client_ip(request))
    return Response(status_code=204)


@devices.post("/{device_id}/rpc", response_model=RpcOut)
async def rpc(actor: CanWrite, device_id: ObjectId, data: RpcIn, request: Request) -> Any:
    """Server-side RPC to the device. Two-way: waits up to timeout_ms for the device's answer and
    answers 408 (as ThingsBoard does) if none comes. One-way: answers 202 once the request is sent."""

    def _check() -> tuple[int, int]:
        with request.app.state.db.session() as db:
            device = service.get_device(db, actor=actor, device_id=device_id)
            if device.enterprise_id is None:
                raise Conflict("This device has not been claimed yet.")
            audit.record(db, actor=actor, action="rpc", entity_type="device", entity_id=device.id,
                         after={"method": data.method, "params": data.params, "oneway": data.oneway},
                         enterprise_id=device.enterprise_id, ip=client_ip(request))
            return device.id, device.enterprise_id

    dev_id, enterprise_id = await run_in_threadpool(_check)
    events = request.app.state.events
    pipeline = getattr(request.app.state, "ingest", None)
    if data.oneway:
        request_id = pipeline.next_rpc_id() if pipeline is not None else secrets.randbelow(2**31 - 1) + 1
        events.publish(f"rpc.{enterprise_id}.{dev_id}", {"id": request_id, "method": data.method,
                                                        "params": data.params, "device_id": dev_id, "oneway": True})
        return Response(status_code=202, content=RpcOut(id=request_id, delivered=False).model_dump_json(),
                        media_type="application/json")
    if pipeline is None:
        raise ServiceUnavailable("Device messaging is not running on this server.")
    try:
        response = await pipeline.call_rpc(enterprise_id=enterprise_id, device_id=dev_id, method=data.method,
                                           params=data.params, timeout_s=data.timeout_ms / 1000)
    except TimeoutError:
        raise DeviceTimeout(f"The device did not answer '{data.method}' within {data.timeout_ms} ms; "
                            "it may be offline.") from None
    return RpcOut(response=response)


@devices.get("/{device_id}/errors", response_model=DeviceErrorsOut)
async def device_errors(actor: CanRead, device_id: ObjectId, request: Request,
                        limit: Annotated[int, Query(ge=1, le=500)] = 50) -> DeviceErrorsOut:
    pipeline = getattr(request.app.state, "ingest", None)

    def _read() -> DeviceErrorsOut:
        if pipeline is not None:
            pipeline.flush_rejects()  # so the answer includes rejects counted a moment ago
        with request.app.state.db.session() as db:
            device, rejects, recent = service.device_errors(db, actor=actor, device_id=device_id, recent_limit=limit)
            return DeviceErrorsOut(
                device_id=device.id, errors_total=device.errors_total,
                by_reason=[RejectOut(reason=r.reason, count=r.count, last_detail=r.last_detail, last_at=r.last_at)
                           for r in rejects],
                recent=[RecentErrorOut(reason=e.reason, detail=e.detail, at=e.at) for e in recent])

    return await run_in_threadpool(_read)


router.include_router(profiles)
router.include_router(devices)
router.include_router(device_http_router)
# Gateways (engineer "gateways"): OPC UA / Modbus connector configurations at /api/connectors.
from ecoplat.connect.gateways.api import router as connectors_router  # noqa: E402

router.include_router(connectors_router)
