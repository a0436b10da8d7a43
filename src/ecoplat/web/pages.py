"""The foundation's pages: sign in/out, language switch, ecosystem overview, enterprise page with
its site tree, user admin and audit log. Every read and write goes through the tenancy service,
which scopes by tenant (another tenant's id answers 404, rendered as a page)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Annotated, Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ecoplat.db import DbSession
from ecoplat.errors import Conflict, Forbidden, NotFound, ProblemError
from ecoplat.pagination import PageParams, paginate
from ecoplat.tenancy import service as tenancy
from ecoplat.tenancy.auth import Principal, authenticate
from ecoplat.tenancy.models import Ecosystem, EcosystemMembership, Enterprise, MembershipRole, Role
from ecoplat.tenancy.schemas import UserCreate, UserUpdate
from ecoplat.web.auth import (
    OptionalPagePrincipal,
    PagePrincipal,
    clear_session_cookies,
    page_router,
    safe_next,
    set_session_cookies,
)
from ecoplat.web.login import LoginFailed, password_login, save_user_locale
from ecoplat.web.templating import (
    LOCALE_COOKIE,
    LOCALES,
    N_,
    NC_,
    STATIC_DIR,
    get_translations,
    normalize_locale,
    render,
    request_locale,
    translate,
)
from ecoplat.web.views import (
    audit_diff,
    build_site_tree,
    country_chart,
    iri_local_name,
    show_value,
    size_class_chart,
)

router = page_router()
router.mount("/static", StaticFiles(directory=str(STATIC_DIR), check_dir=False), name="static")

T = TypeVar("T")

# Labels of enumerations, marked for translation (the templates translate them with _()).
SIZE_CONTEXT = "size class"
SIZE_LABELS = {"large": NC_("size class", "Large"), "medium": NC_("size class", "Medium"),
               "small": NC_("size class", "Small"), "micro": NC_("size class", "Micro")}
MEMBERSHIP_LABELS = {"co_builder": N_("Co-builder"), "member": N_("Member")}
ROLE_LABELS = {
    "platform_admin": N_("Platform admin"),
    "ecosystem_steward": N_("Ecosystem steward"),
    "enterprise_admin": N_("Enterprise admin"),
    "engineer": N_("Engineer"),
    "safety_officer": N_("Safety officer"),
    "operator": N_("Operator"),
    "customer": N_("Customer"),
}
KIND_LABELS = {"site": N_("Site"), "area": N_("Area"), "line": N_("Line"), "workstation": N_("Workstation"),
               "equipment": N_("Equipment")}
ACTION_LABELS = {"create": N_("created"), "update": N_("updated"), "delete": N_("deleted"),
                 "login": N_("signed in"), "login_failed": N_("failed sign-in"), "revoke": N_("revoked")}
ENTITY_LABELS = {"ecosystem": N_("ecosystem"), "enterprise": N_("enterprise"),
                 "ecosystem_membership": N_("ecosystem membership"), "site": N_("site"), "area": N_("area"),
                 "line": N_("line"), "workstation": N_("workstation"), "equipment": N_("equipment"),
                 "user": N_("user"), "api_key": N_("API key")}
DEVICE_STATUS_LABELS = {"online": N_("online"), "offline": N_("offline")}
PAGE_LIMIT = 50
TREE_BATCH = 500


def _ip(request: Request) -> str:
    return request.client.host if request.client else ""


def _all(fn: Callable[..., tuple[list[T], str | None]], db: Session, actor: Principal, **filters: Any) -> list[T]:
    """Every row of a paginated service list (a plant has hundreds of rows, not millions)."""
    rows: list[T] = []
    cursor: str | None = None
    while True:
        page, cursor = fn(db, actor=actor, page=PageParams(limit=TREE_BATCH, cursor=cursor), **filters)
        rows.extend(page)
        if not cursor:
            return rows


def _zone(tz: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(tz or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


# ---------------------------------------------------------------- sign in/out, language

@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, principal: OptionalPagePrincipal, next: str = "/") -> Response:
    if principal is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return render(request, "login.html", {"next": safe_next(next), "values": {}, "errors": {},
                                          "demo_credentials": _demo_credentials_path(request)})


def _demo_credentials_path(request: Request) -> str | None:
    """Where a demo wrote its accounts, so whoever lost the console output can find them."""
    from ecoplat.demo import CREDENTIALS_FILE

    path = request.app.state.settings.data_dir / CREDENTIALS_FILE
    return str(path.resolve()) if path.exists() else None


@router.post("/login", response_class=HTMLResponse)
def login_submit(request: Request, db: DbSession, email: Annotated[str, Form()] = "",
                 password: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/") -> Response:
    settings = request.app.state.settings
    errors: dict[str, str] = {}
    if not email.strip():
        errors["email"] = translate(request, "Enter your e-mail address.")
    if not password:
        errors["password"] = translate(request, "Enter your password.")
    form_error = None
    status = 422
    headers: dict[str, str] | None = None
    if not errors:
        try:
            tokens = password_login(db, email=email.strip(), password=password, settings=settings, ip=_ip(request))
        except LoginFailed as e:
            status = e.status
            if e.retry_after_s:
                headers = {"Retry-After": str(e.retry_after_s)}
                form_error = translate(request, "Too many failed sign-ins. Try again in %(seconds)s seconds.",
                                       seconds=e.retry_after_s)
            else:
                form_error = translate(request, "The e-mail address or the password is wrong, "
                                                "or the account is deactivated.")
        else:
            _carry_locale_choice(request, db, tokens["access_token"])
            response = RedirectResponse(safe_next(next), status_code=303)
            set_session_cookies(response, tokens, settings)
            return response
    return render(request, "login.html", {"next": safe_next(next), "values": {"email": email}, "errors": errors,
                                          "form_error": form_error, "demo_credentials": _demo_credentials_path(request)},
                  status_code=status, headers=headers)


def _carry_locale_choice(request: Request, db: Session, access_token: str) -> None:
    """A language picked on the login page (the cookie) is the user's latest explicit choice:
    signing in saves it on the account instead of switching back to the saved one."""
    chosen = normalize_locale(request.cookies.get(LOCALE_COOKIE))
    if chosen is None:
        return
    principal = authenticate(db, access_token, secret=request.app.state.settings.resolved_secret_key)
    if normalize_locale(principal.locale) != chosen:
        save_user_locale(db, actor=principal, locale=chosen)


@router.post("/logout")
def logout(request: Request) -> Response:
    response = RedirectResponse("/login", status_code=303)
    clear_session_cookies(response)
    return response


@router.post("/locale")
def switch_locale(request: Request, db: DbSession, principal: OptionalPagePrincipal,
                  locale: Annotated[str, Form()] = "en", next: Annotated[str, Form()] = "/") -> Response:
    """Switches the UI language: saved on the user when signed in, and in a cookie in any case
    (so the login page speaks it too)."""
    chosen = normalize_locale(locale) or "en"
    if principal is not None and principal.user_id is not None:
        save_user_locale(db, actor=principal, locale=chosen)
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(LOCALE_COOKIE, chosen, max_age=365 * 86400, httponly=True, samesite="lax", path="/")
    return response


# ---------------------------------------------------------------- ecosystem overview

@dataclass
class MemberView:
    """One page of an ecosystem's members plus the aggregates charted above it."""

    members: list[dict[str, Any]]
    next_cursor: str | None
    by_size: dict[str, int]
    by_country: dict[str, int]
    co_builders: int
    total: int


def _ecosystem_members(db: Session, *, actor: Principal, ecosystem_id: int, cursor: str | None) -> MemberView:
    """The public fields of an ecosystem's members (name, country, size class, ISIC class, role),
    a page at a time, and the counts by size class and country (GROUP BY, so an ecosystem of
    100,000 members charts as fast as one of four).

    The tenancy service lists whole enterprises only to stewards and platform admins; the written
    permission 'ecosystem:read' lets every member see the member list, so this reads the public
    columns only, and only of an ecosystem the service says the actor may see (404 otherwise)."""
    tenancy.get_ecosystem(db, actor=actor, ecosystem_id=ecosystem_id)
    in_ecosystem = EcosystemMembership.ecosystem_id == ecosystem_id
    joined = select(Enterprise).join(EcosystemMembership, EcosystemMembership.enterprise_id == Enterprise.id)

    def grouped(column: Any) -> dict[str, int]:
        rows = db.execute(select(column, func.count())
                          .join(EcosystemMembership, EcosystemMembership.enterprise_id == Enterprise.id)
                          .where(in_ecosystem).group_by(column)).all()
        return {getattr(k, "value", k): int(n) for k, n in rows}

    by_size = grouped(Enterprise.size_class)
    by_country = grouped(Enterprise.country)
    co_builders = int(db.scalar(select(func.count()).select_from(EcosystemMembership).where(
        in_ecosystem, EcosystemMembership.role == MembershipRole.co_builder)) or 0)
    rows, next_cursor = paginate(db, joined.where(in_ecosystem), PageParams(limit=PAGE_LIMIT, cursor=cursor),
                                 key=(Enterprise.id,))
    roles = dict(db.execute(select(EcosystemMembership.enterprise_id, EcosystemMembership.role)
                            .where(in_ecosystem, EcosystemMembership.enterprise_id.in_([e.id for e in rows]))).all())
    members = [{"id": e.id, "name": e.name, "country": e.country, "size_class": e.size_class.value,
                "isic_class": e.isic_class, "role": getattr(roles.get(e.id), "value", "member")} for e in rows]
    return MemberView(members=members, next_cursor=next_cursor, by_size=by_size, by_country=by_country,
                      co_builders=co_builders, total=sum(by_size.values()))


def _ecosystem_name(eco: Ecosystem, locale: str) -> str:
    return eco.name_zh if locale == "zh-CN" and eco.name_zh else eco.name_en


@router.get("/banners", response_class=HTMLResponse)
def banners(request: Request, principal: PagePrincipal) -> Response:
    """The banners under the navigation as they are now, for a page that refreshes them without
    reloading (the alarm console, after every alarm event)."""
    return render(request, "_banners.html")


@router.get("/", response_class=HTMLResponse)
def overview(request: Request, db: DbSession, principal: PagePrincipal,
             ecosystem: Annotated[int | None, Query(ge=1, le=2_147_483_647)] = None,
             cursor: str | None = None) -> Response:
    locale = request_locale(request)
    if not principal.can("ecosystem:read"):
        # Someone without ecosystem access still has a home: their enterprise.
        return RedirectResponse("/enterprise", status_code=303)
    ecosystems = _all(tenancy.list_ecosystems, db, principal)
    selected = None
    if ecosystem is not None:
        selected = tenancy.get_ecosystem(db, actor=principal, ecosystem_id=ecosystem)
    elif ecosystems:
        own = set(db.scalars(select(EcosystemMembership.ecosystem_id)
                             .where(EcosystemMembership.enterprise_id == principal.enterprise_id)))
        selected = next((e for e in ecosystems if e.id in own), ecosystems[0])
    view: MemberView | None = None
    charts: dict[str, Any] = {}
    if selected is not None:
        view = _ecosystem_members(db, actor=principal, ecosystem_id=selected.id, cursor=cursor or None)
        t = get_translations(locale)
        territories = _territories(locale)
        charts = {
            "size": size_class_chart(view.by_size, lambda s: t.pgettext(SIZE_CONTEXT, SIZE_LABELS.get(s, s)),
                                     t.gettext("Members by size class")),
            "country": country_chart(view.by_country, lambda c: territories.get(c, c), t.gettext("Members by country")),
        }
        for m in view.members:
            m["country_name"] = territories.get(m["country"], m["country"])
            m["viewable"] = principal.is_platform_admin or m["id"] == principal.enterprise_id or (
                selected.id in principal.stewarded_ecosystem_ids and principal.can("ecosystem:members"))
    counts = tenancy.member_counts(db, [e.id for e in ecosystems])
    return render(request, "overview.html", {
        "ecosystems": [{"id": e.id, "name": _ecosystem_name(e, locale), "industry": e.industry,
                        "members": counts.get(e.id, 0)} for e in ecosystems],
        "selected": selected,
        "selected_name": _ecosystem_name(selected, locale) if selected else "",
        "members": view.members if view else [],
        "next_cursor": view.next_cursor if view else None,
        "member_total": view.total if view else 0,
        "country_total": len(view.by_country) if view else 0,
        "charts": charts,
        "size_labels": SIZE_LABELS,
        "membership_labels": MEMBERSHIP_LABELS,
        "co_builders": view.co_builders if view else 0,
    })


def _territories(locale: str) -> dict[str, str]:
    from babel import Locale

    return dict(Locale.parse(LOCALES.get(locale, "en")).territories)


# ---------------------------------------------------------------- enterprise and its site tree

@router.get("/enterprises", response_class=HTMLResponse)
def enterprises_page(request: Request, db: DbSession, principal: PagePrincipal, q: str | None = None,
                     country: str | None = None, size_class: str | None = None,
                     cursor: str | None = None) -> Response:
    """The enterprises one may see: all for a platform admin, the members of the ecosystems one
    stewards for a steward, one's own otherwise (the tenancy service decides), with search."""
    principal.require("enterprise:read")
    locale = request_locale(request)
    country_code = (country or "").strip().upper() or None
    size = size_class if size_class in SIZE_LABELS else None
    rows, next_cursor = tenancy.list_enterprises(db, actor=principal, page=PageParams(limit=PAGE_LIMIT,
                                                                                      cursor=cursor or None),
                                                 q=(q or "").strip() or None, country=country_code,
                                                 size_class=size)
    territories = _territories(locale)
    return render(request, "enterprises.html", {
        "enterprises": [{"id": e.id, "name": e.name, "country": e.country,
                         "country_name": territories.get(e.country, e.country),
                         "size_class": e.size_class.value, "isic_class": e.isic_class} for e in rows],
        "next_cursor": next_cursor,
        "params": {"q": q or "", "country": country_code or "", "size_class": size or ""},
        "size_labels": SIZE_LABELS,
    })


@router.get("/enterprise")
def own_enterprise(principal: PagePrincipal) -> Response:
    return RedirectResponse(f"/enterprises/{principal.enterprise_id}", status_code=303)


@router.get("/enterprises/{enterprise_id}", response_class=HTMLResponse)
def enterprise_page(request: Request, db: DbSession, principal: PagePrincipal, enterprise_id: int) -> Response:
    if not 1 <= enterprise_id <= 2_147_483_647:
        raise NotFound("enterprise", enterprise_id)
    locale = request_locale(request)
    ent = tenancy.get_enterprise(db, actor=principal, enterprise_id=enterprise_id)
    view = tenancy.enterprise_views(db, actor=principal, rows=[ent])[0]
    # The plant is private: its own people (with plant:read) and platform admins see it;
    # a steward of the ecosystem sees the public fields only.
    show_tree = principal.sees_enterprise(ent.id) and principal.can("plant:read")
    tree = []
    if show_tree:
        sites = _all(tenancy.list_sites, db, principal, enterprise_id=ent.id)
        areas, lines, workstations, equipment = [], [], [], []
        if ent.id == principal.enterprise_id:
            # One list per level: the service scopes each to the reader's own enterprise.
            areas = _all(tenancy.list_areas, db, principal)
            lines = _all(tenancy.list_lines, db, principal)
            workstations = _all(tenancy.list_workstations, db, principal)
            equipment = _all(tenancy.list_equipment, db, principal)
        else:
            # A platform admin looking at another enterprise: walk it parent by parent, since the
            # unfiltered lists would span every enterprise.
            for s in sites:
                site_areas = _all(tenancy.list_areas, db, principal, site_id=s.id)
                areas.extend(site_areas)
                for a in site_areas:
                    area_lines = _all(tenancy.list_lines, db, principal, area_id=a.id)
                    lines.extend(area_lines)
                    for ln in area_lines:
                        workstations.extend(_all(tenancy.list_workstations, db, principal, line_id=ln.id))
                equipment.extend(_all(tenancy.list_equipment, db, principal, site_id=s.id))
        tree = build_site_tree(sites, areas, lines, workstations, equipment)
    devices = _devices_by_equipment(db, principal, ent.id) if show_tree else {}
    ecosystems = {e.id: e for e in _all(tenancy.list_ecosystems, db, principal)} if principal.can("ecosystem:read") else {}
    memberships = [{"name": _ecosystem_name(ecosystems[m.ecosystem_id], locale), "id": m.ecosystem_id,
                    "role": m.role.value} for m in view.memberships if m.ecosystem_id in ecosystems]
    return render(request, "enterprise.html", {
        "enterprise": view,
        "country_name": _territories(locale).get(ent.country, ent.country),
        "tree": tree,
        "show_tree": show_tree,
        "memberships": memberships,
        "size_labels": SIZE_LABELS,
        "membership_labels": MEMBERSHIP_LABELS,
        "kind_labels": KIND_LABELS,
        "iri_local_name": iri_local_name,
        "devices": devices,
        "device_status_labels": DEVICE_STATUS_LABELS,
        "nav_active": "/enterprise" if ent.id == principal.enterprise_id else "/enterprises",
    })


def _devices_by_equipment(db: Session, principal: Principal, enterprise_id: int) -> dict[int, list[Any]]:
    """The connected devices of each piece of equipment, through the connect service (which lists
    the actor's own enterprise's devices only)."""
    if enterprise_id != principal.enterprise_id or not principal.can("devices:read"):
        return {}
    from ecoplat.connect import service as connect

    rows = _all(connect.list_devices, db, principal, filters=connect.DeviceFilters())
    out: dict[int, list[Any]] = {}
    for device in connect.to_out(db, rows):
        if device.equipment_id is not None:
            out.setdefault(device.equipment_id, []).append(device)
    return out


# ---------------------------------------------------------------- user admin

def _grantable_roles(principal: Principal) -> list[str]:
    """The roles the tenancy service lets this user grant (its rule, not a copy of it), in the
    order of the Role enumeration."""
    grantable = tenancy._grantable(principal)
    return [r.value for r in Role if r.value in grantable]


def _field_errors(request: Request, exc: ValidationError) -> dict[str, str]:
    errors: dict[str, str] = {}
    for e in exc.errors():
        name = str(e["loc"][0]) if e.get("loc") else "form"
        if name in errors:
            continue
        kind = e.get("type", "")
        if name == "email":
            errors[name] = translate(request, "Enter a valid e-mail address, like name@example.com.")
        elif name == "password":
            errors[name] = translate(request, "The password needs at least 8 characters.")
        elif name == "roles" and kind in ("too_short", "missing"):
            errors[name] = translate(request, "Choose at least one role.")
        else:
            errors[name] = translate(request, "This value is not valid: %(problem)s", problem=e.get("msg", ""))
    return errors


def _users_page(request: Request, db: Session, principal: Principal, *, values: dict[str, Any] | None = None,
                errors: dict[str, str] | None = None, form_error: str | None = None, status_code: int = 200,
                q: str | None = None, cursor: str | None = None, notice: str | None = None) -> Response:
    users, next_cursor = tenancy.list_users(db, actor=principal, page=PageParams(limit=PAGE_LIMIT, cursor=cursor),
                                            q=q or None, enterprise_id=principal.enterprise_id)
    ent = db.get(Enterprise, principal.enterprise_id)
    return render(request, "users.html", {
        "users": users,
        "next_cursor": next_cursor,
        "q": q or "",
        "values": values or {"roles": [], "locale": "en"},
        "errors": errors or {},
        "form_error": form_error,
        "notice": notice,
        "can_write": principal.can("users:write"),
        "grantable": _grantable_roles(principal),
        "role_options": [(r, translate(request, ROLE_LABELS[r])) for r in _grantable_roles(principal)],
        "role_labels": ROLE_LABELS,
        "timezone": ent.timezone if ent else "UTC",
    }, status_code=status_code)


@router.get("/users", response_class=HTMLResponse)
def users_page(request: Request, db: DbSession, principal: PagePrincipal, q: str | None = None,
               cursor: str | None = None, done: str | None = None) -> Response:
    principal.require("users:read")
    notices = {"created": translate(request, "The user was created."),
               "deactivated": translate(request, "The user was deactivated; their sessions end now."),
               "activated": translate(request, "The user was reactivated.")}
    return _users_page(request, db, principal, q=q, cursor=cursor, notice=notices.get(done or ""))


@router.post("/users", response_class=HTMLResponse)
async def users_create(request: Request, db: DbSession, principal: PagePrincipal) -> Response:
    principal.require("users:write")
    form = await request.form()
    values: dict[str, Any] = {
        "email": str(form.get("email", "")).strip(),
        "full_name": str(form.get("full_name", "")).strip(),
        "password": str(form.get("password", "")),
        "roles": [str(r) for r in form.getlist("roles")],
        "locale": LOCALES.get(normalize_locale(str(form.get("locale", "en"))) or "en", "en"),
    }
    shown = {k: v for k, v in values.items() if k != "password"}
    try:
        data = UserCreate.model_validate(values)
    except ValidationError as e:
        return _users_page(request, db, principal, values=shown, errors=_field_errors(request, e), status_code=422)
    try:
        tenancy.create_user(db, actor=principal, data=data, ip=_ip(request))
    except Conflict:
        return _users_page(request, db, principal, values=shown, status_code=409, errors={
            "email": translate(request, "A user with this e-mail address already exists.")})
    except Forbidden as e:
        return _users_page(request, db, principal, values=shown, status_code=403, errors={
            "roles": translate(request, "You cannot grant roles you do not have yourself.")}, form_error=e.detail)
    return RedirectResponse("/users?done=created", status_code=303)


def _user_edit_page(request: Request, db: Session, principal: Principal, user: Any, *,
                    values: dict[str, Any] | None = None, errors: dict[str, str] | None = None,
                    status_code: int = 200, notice: str | None = None) -> Response:
    ent = db.get(Enterprise, user.enterprise_id)
    grantable = _grantable_roles(principal)
    return render(request, "user_edit.html", {
        "user": user,
        "values": values or {"full_name": user.full_name, "roles": list(user.roles), "locale": user.locale},
        "errors": errors or {},
        "notice": notice,
        "role_options": [(r, translate(request, ROLE_LABELS[r])) for r in grantable],
        # Roles the editor may not grant stay as they are; they are shown, not offered.
        "kept_roles": [translate(request, ROLE_LABELS.get(r, r)) for r in user.roles if r not in grantable],
        "can_write": principal.can("users:write") and set(user.roles) <= set(grantable),
        "timezone": ent.timezone if ent else "UTC",
        "nav_active": "/users",
    }, status_code=status_code)


@router.get("/users/{user_id}", response_class=HTMLResponse)
def user_page(request: Request, db: DbSession, principal: PagePrincipal, user_id: int,
              done: str | None = None) -> Response:
    if not 1 <= user_id <= 2_147_483_647:
        raise NotFound("user", user_id)
    user = tenancy.get_user(db, actor=principal, user_id=user_id)
    notice = translate(request, "Saved.") if done == "saved" else None
    return _user_edit_page(request, db, principal, user, notice=notice)


@router.post("/users/{user_id}", response_class=HTMLResponse)
async def user_update(request: Request, db: DbSession, principal: PagePrincipal, user_id: int) -> Response:
    if not 1 <= user_id <= 2_147_483_647:
        raise NotFound("user", user_id)
    user = tenancy.get_user(db, actor=principal, user_id=user_id)
    principal.require("users:write")
    form = await request.form()
    values: dict[str, Any] = {
        "full_name": str(form.get("full_name", "")).strip(),
        "roles": [str(r) for r in form.getlist("roles")],
        "locale": LOCALES.get(normalize_locale(str(form.get("locale", "en"))) or "en", "en"),
    }
    grantable = set(_grantable_roles(principal))
    # Roles the editor cannot grant are not on the form; keep them rather than silently drop them.
    roles = values["roles"] + [r for r in user.roles if r not in grantable]
    try:
        data = UserUpdate.model_validate({**values, "roles": roles})
    except ValidationError as e:
        return _user_edit_page(request, db, principal, user, values=values, errors=_field_errors(request, e),
                               status_code=422)
    try:
        tenancy.update_user(db, actor=principal, user_id=user_id, data=data, ip=_ip(request))
    except Forbidden as e:
        return _user_edit_page(request, db, principal, user, values=values, status_code=403,
                               errors={"roles": e.detail})
    return RedirectResponse(f"/users/{user_id}?done=saved", status_code=303)


def _set_active(request: Request, db: Session, principal: Principal, user_id: int, active: bool) -> Response:
    if not 1 <= user_id <= 2_147_483_647:
        raise NotFound("user", user_id)
    try:
        tenancy.update_user(db, actor=principal, user_id=user_id, data=UserUpdate(is_active=active), ip=_ip(request))
    except Conflict:
        return _users_page(request, db, principal, status_code=409,
                           form_error=translate(request, "You cannot deactivate your own account."))
    return RedirectResponse(f"/users?done={'activated' if active else 'deactivated'}", status_code=303)


@router.post("/users/{user_id}/deactivate")
def users_deactivate(request: Request, db: DbSession, principal: PagePrincipal, user_id: int) -> Response:
    return _set_active(request, db, principal, user_id, False)


@router.post("/users/{user_id}/activate")
def users_activate(request: Request, db: DbSession, principal: PagePrincipal, user_id: int) -> Response:
    return _set_active(request, db, principal, user_id, True)


# ---------------------------------------------------------------- audit log

def _day_start(day: date | None, tz: ZoneInfo) -> datetime | None:
    return datetime.combine(day, time.min, tzinfo=tz) if day else None


def _parse_day(request: Request, value: str | None, field: str, errors: dict[str, str]) -> date | None:
    value = (value or "").strip()
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        errors[field] = translate(request, "Enter a date like 2026-11-27.")
        return None


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, db: DbSession, principal: PagePrincipal,
               entity_type: str | None = None, action: str | None = None, actor: str | None = None,
               entity_id: str | None = None, since: str | None = None, until: str | None = None,
               cursor: str | None = None) -> Response:
    principal.require("audit:read")
    ent = db.get(Enterprise, principal.enterprise_id)
    tz_name = ent.timezone if ent else "UTC"
    tz = _zone(tz_name)
    errors: dict[str, str] = {}
    since_day = _parse_day(request, since, "since", errors)
    until_day = _parse_day(request, until, "until", errors)
    filters = {"entity_type": (entity_type or "").strip() or None, "action": (action or "").strip() or None,
               "actor_label": (actor or "").strip() or None, "entity_id": (entity_id or "").strip() or None}
    events: list[Any] = []
    next_cursor = None
    if not errors:
        # Days are the reader's: 'until 2026-11-27' means through the end of that day in the enterprise's zone.
        until_dt = _day_start(until_day, tz)
        try:
            events, next_cursor = tenancy.list_audit_events(
                db, actor=principal, page=PageParams(limit=PAGE_LIMIT, cursor=cursor or None),
                since=_day_start(since_day, tz), until=until_dt + timedelta(days=1) if until_dt else None,
                enterprise_id=None if principal.is_platform_admin else principal.enterprise_id, **filters)
        except ProblemError as e:
            if e.status != 422:
                raise
            # Only the cursor can be malformed here (a tampered link): start from the first page.
            errors["cursor"] = translate(request, "This page link is no longer valid; showing the newest events.")
            events, next_cursor = tenancy.list_audit_events(
                db, actor=principal, page=PageParams(limit=PAGE_LIMIT), since=_day_start(since_day, tz),
                until=until_dt + timedelta(days=1) if until_dt else None,
                enterprise_id=None if principal.is_platform_admin else principal.enterprise_id, **filters)
    rows = [{"event": ev, "diff": audit_diff(ev.before, ev.after)} for ev in events]
    params = {"entity_type": entity_type or "", "action": action or "", "actor": actor or "",
              "entity_id": entity_id or "", "since": (since or "").strip(), "until": (until or "").strip()}
    return render(request, "audit.html", {"rows": rows, "next_cursor": next_cursor, "params": params,
                                          "show_value": show_value,
                                          "errors": errors, "timezone": tz_name, "action_labels": ACTION_LABELS,
                                          "entity_labels": ENTITY_LABELS},
                  status_code=422 if set(errors) - {"cursor"} else 200)
