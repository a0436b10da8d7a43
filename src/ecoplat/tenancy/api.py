"""Tenancy HTTP API: thin routes over ecoplat.tenancy.service (auth, the ISA-95 tree, users,
API keys, audit trail, health)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import OAuth2PasswordRequestForm

from ecoplat.api_common import NoNul, ObjectId, client_ip, json_response
from ecoplat.db import DbSession
from ecoplat.errors import problem
from ecoplat.pagination import Page, PageQuery
from ecoplat.tenancy import health, service
from ecoplat.tenancy.auth import CurrentPrincipal
from ecoplat.tenancy.models import Role, SizeClass
from ecoplat.tenancy.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    ApiKeyUpdate,
    AreaCreate,
    AreaOut,
    AreaUpdate,
    AuditEventOut,
    EcosystemCreate,
    EcosystemMemberOut,
    EcosystemOut,
    EcosystemUpdate,
    EnterpriseCreate,
    EnterpriseOut,
    EnterpriseUpdate,
    EquipmentCreate,
    EquipmentOut,
    EquipmentUpdate,
    LineCreate,
    LineOut,
    LineUpdate,
    MembershipIn,
    MeOut,
    MePatch,
    RefreshIn,
    SiteCreate,
    SiteOut,
    SiteUpdate,
    TokenOut,
    UserCreate,
    UserOut,
    UserUpdate,
    WorkstationCreate,
    WorkstationOut,
    WorkstationUpdate,
)

Search = Annotated[str | None, Query(max_length=200, description="Text search (case-insensitive substring)."), NoNul]
Cascade = Annotated[bool, Query(description="Also delete everything below this object.")]
FilterId = Annotated[int | None, Query(ge=1, le=2_147_483_647)]

_PROBLEMS = {code: {"description": text, "content": {"application/problem+json": {}}}
             for code, text in ((401, "Not signed in, or the token expired"), (403, "Not allowed for your role"),
                                (404, "No such object in your enterprise"), (409, "Conflict"),
                                (422, "Invalid input"))}

router = APIRouter()
auth_router = APIRouter(prefix="/api/auth", tags=["auth"])
ecosystems = APIRouter(prefix="/api/ecosystems", tags=["ecosystems"], responses=_PROBLEMS)
enterprises = APIRouter(prefix="/api/enterprises", tags=["enterprises"], responses=_PROBLEMS)
sites = APIRouter(prefix="/api/sites", tags=["plant"], responses=_PROBLEMS)
areas = APIRouter(prefix="/api/areas", tags=["plant"], responses=_PROBLEMS)
lines = APIRouter(prefix="/api/lines", tags=["plant"], responses=_PROBLEMS)
workstations = APIRouter(prefix="/api/workstations", tags=["plant"], responses=_PROBLEMS)
equipment = APIRouter(prefix="/api/equipment", tags=["plant"], responses=_PROBLEMS)
users = APIRouter(prefix="/api/users", tags=["users"], responses=_PROBLEMS)
api_keys = APIRouter(prefix="/api/api-keys", tags=["api keys"], responses=_PROBLEMS)
audit_events = APIRouter(prefix="/api/audit-events", tags=["audit"], responses=_PROBLEMS)

_NO_CONTENT = {"status_code": 204, "response_class": Response}


# --- auth -------------------------------------------------------------------------------------

@auth_router.post("/token", response_model=TokenOut,
                  responses={401: _PROBLEMS[401], 429: {"description": "Too many failed sign-ins; see Retry-After"}})
def token(request: Request, db: DbSession, form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> JSONResponse | TokenOut:
    """OAuth2 password flow: `username` is the e-mail address."""
    result = service.login(db, email=form.username, password=form.password,
                           settings=request.app.state.settings, ip=client_ip(request))
    if result.tokens is None:
        headers = {"WWW-Authenticate": "Bearer"} if result.status == 401 else {}
        if result.retry_after is not None:
            headers["Retry-After"] = str(result.retry_after)
        return problem(result.status, result.detail, instance=request.url.path, headers=headers,
                       retry_after=result.retry_after)
    return TokenOut(**result.tokens)


@auth_router.post("/refresh", response_model=TokenOut, responses={401: _PROBLEMS[401]})
def refresh(request: Request, db: DbSession, body: RefreshIn) -> TokenOut:
    return TokenOut(**service.refresh_tokens(db, refresh_token=body.refresh_token,
                                             settings=request.app.state.settings))


@auth_router.get("/me", response_model=MeOut, responses={401: _PROBLEMS[401]})
def get_me(db: DbSession, actor: CurrentPrincipal) -> MeOut:
    return service.me(db, actor=actor)


@auth_router.patch("/me", response_model=MeOut, responses={401: _PROBLEMS[401], 422: _PROBLEMS[422]})
def patch_me(request: Request, db: DbSession, actor: CurrentPrincipal, body: MePatch) -> MeOut:
    return service.update_me(db, actor=actor, data=body, ip=client_ip(request))


# --- ecosystems -------------------------------------------------------------------------------

def _ecosystem_outs(db: DbSession, rows: list) -> list[EcosystemOut]:  # type: ignore[type-arg]
    counts = service.member_counts(db, [r.id for r in rows])
    return [EcosystemOut.model_validate(r).model_copy(update={"member_count": counts.get(r.id, 0)}) for r in rows]


@ecosystems.get("", response_model=Page[EcosystemOut])
def list_ecosystems(db: DbSession, actor: CurrentPrincipal, page: PageQuery, q: Search = None,
                    industry: Annotated[str | None, Query(max_length=100), NoNul] = None) -> Page[EcosystemOut]:
    rows, cursor = service.list_ecosystems(db, actor=actor, page=page, q=q, industry=industry)
    return Page(items=_ecosystem_outs(db, rows), next_cursor=cursor)


@ecosystems.post("", response_model=EcosystemOut, status_code=201)
def create_ecosystem(request: Request, db: DbSession, actor: CurrentPrincipal, body: EcosystemCreate) -> EcosystemOut:
    row = service.create_ecosystem(db, actor=actor, data=body, ip=client_ip(request))
    return _ecosystem_outs(db, [row])[0]


@ecosystems.get("/{ecosystem_id}", response_model=EcosystemOut)
def get_ecosystem(db: DbSession, actor: CurrentPrincipal, ecosystem_id: ObjectId) -> EcosystemOut:
    return _ecosystem_outs(db, [service.get_ecosystem(db, actor=actor, ecosystem_id=ecosystem_id)])[0]


@ecosystems.patch("/{ecosystem_id}", response_model=EcosystemOut)
def update_ecosystem(request: Request, db: DbSession, actor: CurrentPrincipal, ecosystem_id: ObjectId,
                     body: EcosystemUpdate) -> EcosystemOut:
    row = service.update_ecosystem(db, actor=actor, ecosystem_id=ecosystem_id, data=body, ip=client_ip(request))
    return _ecosystem_outs(db, [row])[0]


@ecosystems.delete("/{ecosystem_id}", **_NO_CONTENT)
def delete_ecosystem(request: Request, db: DbSession, actor: CurrentPrincipal, ecosystem_id: ObjectId,
                     cascade: Cascade = False) -> Response:
    service.delete_ecosystem(db, actor=actor, ecosystem_id=ecosystem_id, cascade=cascade, ip=client_ip(request))
    return Response(status_code=204)


@ecosystems.put("/{ecosystem_id}/members/{enterprise_id}", response_model=EcosystemMemberOut)
def set_member(request: Request, db: DbSession, actor: CurrentPrincipal, ecosystem_id: ObjectId,
               enterprise_id: ObjectId, body: MembershipIn) -> EcosystemMemberOut:
    """Adds the enterprise to the ecosystem, or changes its role there (co_builder or member)."""
    row = service.set_membership(db, actor=actor, ecosystem_id=ecosystem_id, enterprise_id=enterprise_id,
                                 role=body.role, ip=client_ip(request))
    return EcosystemMemberOut.model_validate(row)


@ecosystems.delete("/{ecosystem_id}/members/{enterprise_id}", **_NO_CONTENT)
def remove_member(request: Request, db: DbSession, actor: CurrentPrincipal, ecosystem_id: ObjectId,
                  enterprise_id: ObjectId) -> Response:
    service.remove_membership(db, actor=actor, ecosystem_id=ecosystem_id, enterprise_id=enterprise_id,
                              ip=client_ip(request))
    return Response(status_code=204)


# --- enterprises ------------------------------------------------------------------------------

@enterprises.get("", response_model=Page[EnterpriseOut])
def list_enterprises(
    db: DbSession, actor: CurrentPrincipal, page: PageQuery, q: Search = None,
    country: Annotated[str | None, Query(min_length=2, max_length=2, description="ISO 3166-1 alpha-2"), NoNul] = None,
    size_class: SizeClass | None = None,
    isic_class: Annotated[str | None, Query(pattern=r"^[0-9]{4}$")] = None,
    ecosystem_id: FilterId = None,
) -> Response:
    rows, cursor = service.list_enterprises(db, actor=actor, page=page, q=q, country=country,
                                            size_class=size_class, isic_class=isic_class,
                                            ecosystem_id=ecosystem_id)
    return json_response({"items": service.enterprise_view_dicts(db, actor=actor, rows=rows), "next_cursor": cursor})


@enterprises.post("", response_model=EnterpriseOut, status_code=201)
def create_enterprise(request: Request, db: DbSession, actor: CurrentPrincipal, body: EnterpriseCreate) -> EnterpriseOut:
    row = service.create_enterprise(db, actor=actor, data=body, ip=client_ip(request))
    return service.enterprise_views(db, actor=actor, rows=[row])[0]


@enterprises.get("/{enterprise_id}", response_model=EnterpriseOut)
def get_enterprise(db: DbSession, actor: CurrentPrincipal, enterprise_id: ObjectId) -> Response:
    row = service.enterprise_row(db, actor=actor, enterprise_id=enterprise_id)
    return json_response(service.enterprise_view_dicts(db, actor=actor, rows=[row])[0])


@enterprises.patch("/{enterprise_id}", response_model=EnterpriseOut)
def update_enterprise(request: Request, db: DbSession, actor: CurrentPrincipal, enterprise_id: ObjectId,
                      body: EnterpriseUpdate) -> EnterpriseOut:
    row = service.update_enterprise(db, actor=actor, enterprise_id=enterprise_id, data=body, ip=client_ip(request))
    return service.enterprise_views(db, actor=actor, rows=[row])[0]


@enterprises.delete("/{enterprise_id}", **_NO_CONTENT)
def delete_enterprise(request: Request, db: DbSession, actor: CurrentPrincipal, enterprise_id: ObjectId,
                      cascade: Cascade = False) -> Response:
    service.delete_enterprise(db, actor=actor, enterprise_id=enterprise_id, cascade=cascade, ip=client_ip(request))
    return Response(status_code=204)


# --- sites --------------------------------------------------------------------------------------

@sites.get("", response_model=Page[SiteOut])
def list_sites(db: DbSession, actor: CurrentPrincipal, page: PageQuery, q: Search = None,
               enterprise_id: FilterId = None) -> Page[SiteOut]:
    rows, cursor = service.list_sites(db, actor=actor, page=page, q=q, enterprise_id=enterprise_id)
    return Page(items=[SiteOut.model_validate(r) for r in rows], next_cursor=cursor)


@sites.post("", response_model=SiteOut, status_code=201)
def create_site(request: Request, db: DbSession, actor: CurrentPrincipal, body: SiteCreate) -> SiteOut:
    return SiteOut.model_validate(service.create_site(db, actor=actor, data=body, ip=client_ip(request)))


@sites.get("/{site_id}", response_model=SiteOut)
def get_site(db: DbSession, actor: CurrentPrincipal, site_id: ObjectId) -> SiteOut:
    return SiteOut.model_validate(service.get_site(db, actor=actor, site_id=site_id))


@sites.patch("/{site_id}", response_model=SiteOut)
def update_site(request: Request, db: DbSession, actor: CurrentPrincipal, site_id: ObjectId, body: SiteUpdate) -> SiteOut:
    return SiteOut.model_validate(service.update_site(db, actor=actor, site_id=site_id, data=body, ip=client_ip(request)))


@sites.delete("/{site_id}", **_NO_CONTENT)
def delete_site(request: Request, db: DbSession, actor: CurrentPrincipal, site_id: ObjectId,
                cascade: Cascade = False) -> Response:
    service.delete_site(db, actor=actor, site_id=site_id, cascade=cascade, ip=client_ip(request))
    return Response(status_code=204)


# --- areas --------------------------------------------------------------------------------------

@areas.get("", response_model=Page[AreaOut])
def list_areas(db: DbSession, actor: CurrentPrincipal, page: PageQuery, q: Search = None,
               site_id: FilterId = None) -> Page[AreaOut]:
    rows, cursor = service.list_areas(db, actor=actor, page=page, q=q, site_id=site_id)
    return Page(items=[AreaOut.model_validate(r) for r in rows], next_cursor=cursor)


@areas.post("", response_model=AreaOut, status_code=201)
def create_area(request: Request, db: DbSession, actor: CurrentPrincipal, body: AreaCreate) -> AreaOut:
    return AreaOut.model_validate(service.create_area(db, actor=actor, data=body, ip=client_ip(request)))


@areas.get("/{area_id}", response_model=AreaOut)
def get_area(db: DbSession, actor: CurrentPrincipal, area_id: ObjectId) -> AreaOut:
    return AreaOut.model_validate(service.get_area(db, actor=actor, area_id=area_id))


@areas.patch("/{area_id}", response_model=AreaOut)
def update_area(request: Request, db: DbSession, actor: CurrentPrincipal, area_id: ObjectId, body: AreaUpdate) -> AreaOut:
    return AreaOut.model_validate(service.update_area(db, actor=actor, area_id=area_id, data=body, ip=client_ip(request)))


@areas.delete("/{area_id}", **_NO_CONTENT)
def delete_area(request: Request, db: DbSession, actor: CurrentPrincipal, area_id: ObjectId,
                cascade: Cascade = False) -> Response:
    service.delete_area(db, actor=actor, area_id=area_id, cascade=cascade, ip=client_ip(request))
    return Response(status_code=204)


# --- lines --------------------------------------------------------------------------------------

@lines.get("", response_model=Page[LineOut])
def list_lines(db: DbSession, actor: CurrentPrincipal, page: PageQuery, q: Search = None,
               area_id: FilterId = None) -> Page[LineOut]:
    rows, cursor = service.list_lines(db, actor=actor, page=page, q=q, area_id=area_id)
    return Page(items=[LineOut.model_validate(r) for r in rows], next_cursor=cursor)


@lines.post("", response_model=LineOut, status_code=201)
def create_line(request: Request, db: DbSession, actor: CurrentPrincipal, body: LineCreate) -> LineOut:
    return LineOut.model_validate(service.create_line(db, actor=actor, data=body, ip=client_ip(request)))


@lines.get("/{line_id}", response_model=LineOut)
def get_line(db: DbSession, actor: CurrentPrincipal, line_id: ObjectId) -> LineOut:
    return LineOut.model_validate(service.get_line(db, actor=actor, line_id=line_id))


@lines.patch("/{line_id}", response_model=LineOut)
def update_line(request: Request, db: DbSession, actor: CurrentPrincipal, line_id: ObjectId, body: LineUpdate) -> LineOut:
    return LineOut.model_validate(service.update_line(db, actor=actor, line_id=line_id, data=body, ip=client_ip(request)))


@lines.delete("/{line_id}", **_NO_CONTENT)
def delete_line(request: Request, db: DbSession, actor: CurrentPrincipal, line_id: ObjectId,
                cascade: Cascade = False) -> Response:
    service.delete_line(db, actor=actor, line_id=line_id, cascade=cascade, ip=client_ip(request))
    return Response(status_code=204)


# --- workstations -------------------------------------------------------------------------------

@workstations.get("", response_model=Page[WorkstationOut])
def list_workstations(db: DbSession, actor: CurrentPrincipal, page: PageQuery, q: Search = None,
                      line_id: FilterId = None) -> Page[WorkstationOut]:
    rows, cursor = service.list_workstations(db, actor=actor, page=page, q=q, line_id=line_id)
    return Page(items=[WorkstationOut.model_validate(r) for r in rows], next_cursor=cursor)


@workstations.post("", response_model=WorkstationOut, status_code=201)
def create_workstation(request: Request, db: DbSession, actor: CurrentPrincipal, body: WorkstationCreate) -> WorkstationOut:
    return WorkstationOut.model_validate(service.create_workstation(db, actor=actor, data=body, ip=client_ip(request)))


@workstations.get("/{workstation_id}", response_model=WorkstationOut)
def get_workstation(db: DbSession, actor: CurrentPrincipal, workstation_id: ObjectId) -> WorkstationOut:
    return WorkstationOut.model_validate(service.get_workstation(db, actor=actor, workstation_id=workstation_id))


@workstations.patch("/{workstation_id}", response_model=WorkstationOut)
def update_workstation(request: Request, db: DbSession, actor: CurrentPrincipal, workstation_id: ObjectId,
                       body: WorkstationUpdate) -> WorkstationOut:
    row = service.update_workstation(db, actor=actor, workstation_id=workstation_id, data=body, ip=client_ip(request))
    return WorkstationOut.model_validate(row)


@workstations.delete("/{workstation_id}", **_NO_CONTENT)
def delete_workstation(request: Request, db: DbSession, actor: CurrentPrincipal, workstation_id: ObjectId) -> Response:
    service.delete_workstation(db, actor=actor, workstation_id=workstation_id, ip=client_ip(request))
    return Response(status_code=204)


# --- equipment ----------------------------------------------------------------------------------

@equipment.get("", response_model=Page[EquipmentOut])
def list_equipment(db: DbSession, actor: CurrentPrincipal, page: PageQuery, q: Search = None,
                   site_id: FilterId = None, area_id: FilterId = None, line_id: FilterId = None,
                   workstation_id: FilterId = None,
                   equipment_type_iri: Annotated[str | None, Query(max_length=500), NoNul] = None) -> Page[EquipmentOut]:
    rows, cursor = service.list_equipment(db, actor=actor, page=page, q=q, site_id=site_id, area_id=area_id,
                                          line_id=line_id, workstation_id=workstation_id,
                                          equipment_type_iri=equipment_type_iri)
    return Page(items=[EquipmentOut.model_validate(r) for r in rows], next_cursor=cursor)


@equipment.post("", response_model=EquipmentOut, status_code=201)
def create_equipment(request: Request, db: DbSession, actor: CurrentPrincipal, body: EquipmentCreate) -> EquipmentOut:
    return EquipmentOut.model_validate(service.create_equipment(db, actor=actor, data=body, ip=client_ip(request)))


@equipment.get("/{equipment_id}", response_model=EquipmentOut)
def get_equipment(db: DbSession, actor: CurrentPrincipal, equipment_id: ObjectId) -> EquipmentOut:
    return EquipmentOut.model_validate(service.get_equipment(db, actor=actor, equipment_id=equipment_id))


@equipment.patch("/{equipment_id}", response_model=EquipmentOut)
def update_equipment(request: Request, db: DbSession, actor: CurrentPrincipal, equipment_id: ObjectId,
                     body: EquipmentUpdate) -> EquipmentOut:
    row = service.update_equipment(db, actor=actor, equipment_id=equipment_id, data=body, ip=client_ip(request))
    return EquipmentOut.model_validate(row)


@equipment.delete("/{equipment_id}", **_NO_CONTENT)
def delete_equipment(request: Request, db: DbSession, actor: CurrentPrincipal, equipment_id: ObjectId) -> Response:
    service.delete_equipment(db, actor=actor, equipment_id=equipment_id, ip=client_ip(request))
    return Response(status_code=204)


# --- users --------------------------------------------------------------------------------------

@users.get("", response_model=Page[UserOut])
def list_users(db: DbSession, actor: CurrentPrincipal, page: PageQuery, q: Search = None,
               role: Role | None = None, is_active: bool | None = None,
               enterprise_id: FilterId = None) -> Page[UserOut]:
    rows, cursor = service.list_users(db, actor=actor, page=page, q=q, role=role, is_active=is_active,
                                      enterprise_id=enterprise_id)
    return Page(items=[UserOut.model_validate(r) for r in rows], next_cursor=cursor)


@users.post("", response_model=UserOut, status_code=201)
def create_user(request: Request, db: DbSession, actor: CurrentPrincipal, body: UserCreate) -> UserOut:
    return UserOut.model_validate(service.create_user(db, actor=actor, data=body, ip=client_ip(request)))


@users.get("/{user_id}", response_model=UserOut)
def get_user(db: DbSession, actor: CurrentPrincipal, user_id: ObjectId) -> UserOut:
    return UserOut.model_validate(service.get_user(db, actor=actor, user_id=user_id))


@users.patch("/{user_id}", response_model=UserOut)
def update_user(request: Request, db: DbSession, actor: CurrentPrincipal, user_id: ObjectId, body: UserUpdate) -> UserOut:
    return UserOut.model_validate(service.update_user(db, actor=actor, user_id=user_id, data=body, ip=client_ip(request)))


@users.delete("/{user_id}", **_NO_CONTENT)
def delete_user(request: Request, db: DbSession, actor: CurrentPrincipal, user_id: ObjectId) -> Response:
    service.delete_user(db, actor=actor, user_id=user_id, ip=client_ip(request))
    return Response(status_code=204)


# --- API keys -----------------------------------------------------------------------------------

@api_keys.get("", response_model=Page[ApiKeyOut])
def list_api_keys(db: DbSession, actor: CurrentPrincipal, page: PageQuery, user_id: FilterId = None,
                  include_revoked: bool = True) -> Page[ApiKeyOut]:
    rows, cursor = service.list_api_keys(db, actor=actor, page=page, user_id=user_id,
                                         include_revoked=include_revoked)
    return Page(items=[ApiKeyOut.model_validate(r) for r in rows], next_cursor=cursor)


@api_keys.post("", response_model=ApiKeyCreated, status_code=201)
def create_api_key(request: Request, db: DbSession, actor: CurrentPrincipal, body: ApiKeyCreate) -> ApiKeyCreated:
    row, secret = service.create_api_key(db, actor=actor, data=body, ip=client_ip(request))
    return ApiKeyCreated(**ApiKeyOut.model_validate(row).model_dump(), secret=secret)


@api_keys.get("/{api_key_id}", response_model=ApiKeyOut)
def get_api_key(db: DbSession, actor: CurrentPrincipal, api_key_id: ObjectId) -> ApiKeyOut:
    return ApiKeyOut.model_validate(service.get_api_key(db, actor=actor, api_key_id=api_key_id))


@api_keys.patch("/{api_key_id}", response_model=ApiKeyOut)
def update_api_key(request: Request, db: DbSession, actor: CurrentPrincipal, api_key_id: ObjectId,
                   body: ApiKeyUpdate) -> ApiKeyOut:
    row = service.update_api_key(db, actor=actor, api_key_id=api_key_id, data=body, ip=client_ip(request))
    return ApiKeyOut.model_validate(row)


@api_keys.delete("/{api_key_id}", **_NO_CONTENT)
def revoke_api_key(request: Request, db: DbSession, actor: CurrentPrincipal, api_key_id: ObjectId) -> Response:
    """Revokes the key: it stops working at once; the row stays for the audit trail."""
    service.revoke_api_key(db, actor=actor, api_key_id=api_key_id, ip=client_ip(request))
    return Response(status_code=204)


# --- audit events (read-only: POST/PATCH/DELETE answer 405) --------------------------------------

@audit_events.get("", response_model=Page[AuditEventOut])
def list_audit_events(
    db: DbSession, actor: CurrentPrincipal, page: PageQuery,
    entity_type: Annotated[str | None, Query(max_length=64), NoNul] = None,
    entity_id: Annotated[str | None, Query(max_length=64), NoNul] = None,
    action: Annotated[str | None, Query(max_length=32), NoNul] = None,
    actor_label: Annotated[str | None, Query(alias="actor", max_length=320), NoNul] = None,
    since: datetime | None = None, until: datetime | None = None, enterprise_id: FilterId = None,
) -> Page[AuditEventOut]:
    rows, cursor = service.list_audit_events(db, actor=actor, page=page, entity_type=entity_type,
                                             entity_id=entity_id, action=action, actor_label=actor_label,
                                             since=since, until=until, enterprise_id=enterprise_id)
    return Page(items=[AuditEventOut.model_validate(r) for r in rows], next_cursor=cursor)


@audit_events.get("/{audit_event_id}", response_model=AuditEventOut)
def get_audit_event(db: DbSession, actor: CurrentPrincipal, audit_event_id: ObjectId) -> AuditEventOut:
    return AuditEventOut.model_validate(service.get_audit_event(db, actor=actor, audit_event_id=audit_event_id))


for _sub in (auth_router, ecosystems, enterprises, sites, areas, lines, workstations, equipment, users,
             api_keys, audit_events, health.router):
    router.include_router(_sub)
