"""Tenancy services: the logic behind the API and pages. Keyword-only functions that take the
session and the acting Principal; they flush, never commit (the request's unit of work commits).

Scoping is here, not in the routes: a platform admin sees everything; everyone else sees their
own enterprise's objects only, and another enterprise's id answers 404 (NotFound), never 403, so
ids of other tenants leak nothing. Ecosystem stewards additionally see the public fields of the
member enterprises of the ecosystems they steward."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    Integer,
    String,
    Table,
    and_,
    bindparam,
    cast,
    column,
    delete,
    exists,
    func,
    or_,
    select,
    table,
    text,
)
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ecoplat.config import Settings
from ecoplat.db import utcnow
from ecoplat.errors import Conflict, Forbidden, NotAuthenticated, NotFound, Unprocessable
from ecoplat.pagination import PageParams, paginate
from ecoplat.tenancy import audit
from ecoplat.tenancy.auth import (
    Principal,
    decode_token,
    hash_api_key,
    hash_password,
    issue_tokens,
    new_api_key_secret,
    principal_for_user,
    verify_password,
)
from ecoplat.tenancy.models import (
    ApiKey,
    Area,
    AuditEvent,
    Ecosystem,
    EcosystemMembership,
    Enterprise,
    Equipment,
    Line,
    MembershipRole,
    Role,
    Site,
    User,
    Workstation,
)
from ecoplat.tenancy.schemas import (
    ApiKeyCreate,
    ApiKeyUpdate,
    AreaCreate,
    AreaUpdate,
    EcosystemCreate,
    EcosystemUpdate,
    EnterpriseCreate,
    EnterpriseOut,
    EnterpriseUpdate,
    EquipmentCreate,
    EquipmentUpdate,
    LineCreate,
    LineUpdate,
    MeOut,
    MePatch,
    SiteCreate,
    SiteUpdate,
    UserCreate,
    UserUpdate,
    WorkstationCreate,
    WorkstationUpdate,
)
from ecoplat.tenancy.search import enterprise_search_page

# --- shared helpers ---------------------------------------------------------------------------


def _like_pattern(q: str, *, prefix_only: bool = False) -> str:
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"{escaped}%" if prefix_only else f"%{escaped}%"


def _scope(stmt: Any, model: Any, actor: Principal, enterprise_id: int | None = None) -> Any:
    """Restricts a select to the rows the actor may see (one enterprise unless platform admin)."""
    if actor.is_platform_admin:
        return stmt.where(model.enterprise_id == enterprise_id) if enterprise_id is not None else stmt
    if enterprise_id is not None and enterprise_id != actor.enterprise_id:
        return stmt.where(False)
    return stmt.where(model.enterprise_id == actor.enterprise_id)


def _get_scoped(db: Session, model: Any, kind: str, obj_id: int, actor: Principal) -> Any:
    row = db.get(model, obj_id)
    if row is None or not actor.sees_enterprise(row.enterprise_id):
        raise NotFound(kind, obj_id)
    return row


def _apply(row: Any, changes: dict[str, Any], nullable: Iterable[str] = ()) -> None:
    """Sets the given fields; an explicit null only clears the columns that may be empty."""
    allowed_null = set(nullable)
    for key, value in changes.items():
        if value is None and key not in allowed_null:
            continue
        setattr(row, key, value)


def _check_enterprise_exists(db: Session, enterprise_id: int) -> None:
    if db.get(Enterprise, enterprise_id) is None:
        raise NotFound("enterprise", enterprise_id)


def _target_enterprise(db: Session, actor: Principal, requested: int | None) -> int:
    """The enterprise a new object goes into: the actor's own, or any for a platform admin."""
    if requested is None or requested == actor.enterprise_id:
        return actor.enterprise_id
    if not actor.is_platform_admin:
        raise NotFound("enterprise", requested)
    _check_enterprise_exists(db, requested)
    return requested


def _flush_unique(db: Session, message: str, obj: Any = None) -> None:
    """Flushes in a savepoint: two requests racing past the duplicate check meet the unique index,
    and the loser gets the same 409 as if the check had caught it."""
    try:
        with db.begin_nested():
            if obj is not None:
                db.add(obj)
            db.flush()
    except IntegrityError as e:
        raise Conflict(message) from e


def _delete_referenced(db: Session, stmt: Any, what: str) -> None:
    """Runs a DELETE in a savepoint: rows of other domains that still point at the object without
    ON DELETE CASCADE make it a 409 the caller can act on, not a server error."""
    try:
        with db.begin_nested():
            db.execute(stmt)
    except IntegrityError as e:
        raise Conflict(f"{what} is still referenced by other records (devices, rules, orders…); "
                       "remove those first.") from e


def _count(db: Session, model: Any, *where: Any) -> int:
    return int(db.scalar(select(func.count()).select_from(model).where(*where)) or 0)


# --- auth -------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    # Unknown e-mails are checked against this, so they cost as much time as a wrong password
    # and the response time does not reveal which e-mails have accounts.
    return hash_password("ecoplat-no-such-user-dummy-password")


@dataclass(frozen=True)
class LoginResult:
    tokens: dict[str, Any] | None = None
    status: int = 200
    detail: str = ""
    retry_after: int | None = None


def login_delay_seconds(failed_count: int, *, free_attempts: int, max_delay: int) -> int:
    """How long to wait after `failed_count` failures: nothing for the first free attempts, then
    1, 2, 4, … seconds, capped (exponential back-off slows guessing without locking users out)."""
    if failed_count < free_attempts:
        return 0
    return int(min(2 ** (failed_count - free_attempts), max_delay))


def login(db: Session, *, email: str, password: str, settings: Settings, ip: str = "") -> LoginResult:
    """Checks a password sign-in. Returns instead of raising so that the failure counter the
    caller's unit of work holds is committed (an exception would roll it back)."""
    now = utcnow()
    # A NUL cannot be in any stored e-mail (and PostgreSQL refuses it in a query).
    user = None if "\x00" in email else db.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None:
        verify_password(_dummy_hash(), password)
        return LoginResult(status=401, detail="Wrong e-mail or password.")
    delay = login_delay_seconds(user.failed_login_count, free_attempts=settings.login_free_attempts,
                                max_delay=settings.login_max_delay_seconds)
    if delay and user.last_failed_login_at is not None:
        wait = (user.last_failed_login_at + timedelta(seconds=delay) - now).total_seconds()
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            return LoginResult(status=429, retry_after=seconds,
                               detail=f"Too many failed sign-ins for this account; try again in {seconds} s.")
    if not verify_password(user.password_hash, password):
        user.failed_login_count += 1
        user.last_failed_login_at = now
        actor = principal_for_user(db, user)
        audit.record(db, actor=actor, action="login_failed", entity_type="user", entity_id=user.id,
                     enterprise_id=user.enterprise_id, ip=ip,
                     after={"failed_login_count": user.failed_login_count})
        return LoginResult(status=401, detail="Wrong e-mail or password.")
    if not user.is_active:
        return LoginResult(status=401, detail="This account is deactivated; ask your enterprise admin.")
    user.failed_login_count = 0
    user.last_failed_login_at = None
    user.last_login_at = now
    db.flush()
    audit.record(db, actor=principal_for_user(db, user), action="login", entity_type="user",
                 entity_id=user.id, enterprise_id=user.enterprise_id, ip=ip)
    return LoginResult(tokens=issue_tokens(user, secret=settings.resolved_secret_key,
                                           access_minutes=settings.access_token_minutes,
                                           refresh_days=settings.refresh_token_days))


def refresh_tokens(db: Session, *, refresh_token: str, settings: Settings) -> dict[str, Any]:
    claims = decode_token(refresh_token, secret=settings.resolved_secret_key, expected_type="refresh")
    try:
        user = db.get(User, int(claims.get("sub", "")))
    except (TypeError, ValueError):
        user = None
    if user is None or not user.is_active:
        raise NotAuthenticated("This account no longer exists or is deactivated.")
    if claims.get("ver") != user.token_version:
        raise NotAuthenticated("This refresh token was revoked (password changed or signed out); sign in again.")
    return issue_tokens(user, secret=settings.resolved_secret_key,
                        access_minutes=settings.access_token_minutes,
                        refresh_days=settings.refresh_token_days)


def me(db: Session, *, actor: Principal) -> MeOut:
    user = db.get(User, actor.user_id) if actor.user_id else None
    enterprise = db.get(Enterprise, actor.enterprise_id)
    return MeOut(
        user_id=actor.user_id,
        email=user.email if user else actor.label,
        full_name=user.full_name if user else "",
        enterprise_id=actor.enterprise_id,
        enterprise_name=enterprise.name if enterprise else "",
        roles=sorted(actor.roles),
        permissions=sorted(actor.permissions),
        locale=user.locale if user else actor.locale,
        stewarded_ecosystem_ids=sorted(actor.stewarded_ecosystem_ids),
        api_key_id=actor.api_key_id,
    )


def update_me(db: Session, *, actor: Principal, data: MePatch, ip: str = "") -> MeOut:
    if actor.user_id is None:
        raise Forbidden("Only a signed-in user can change their profile.")
    user = db.get(User, actor.user_id)
    if user is None:
        raise NotFound("user", actor.user_id)
    before = audit.snapshot(user)
    if data.full_name is not None:
        user.full_name = data.full_name
    if data.locale is not None:
        user.locale = data.locale
    if data.new_password is not None:
        if not data.current_password or not verify_password(user.password_hash, data.current_password):
            raise Unprocessable("current_password: give your current password to set a new one.",
                                errors=[{"field": "current_password", "message": "wrong or missing",
                                         "type": "value_error"}])
        user.password_hash = hash_password(data.new_password)
        user.token_version += 1  # every refresh token issued before is revoked
    db.flush()
    audit.record(db, actor=actor, action="update", entity_type="user", entity_id=user.id,
                 before=before, after=audit.snapshot(user), enterprise_id=user.enterprise_id, ip=ip)
    return me(db, actor=actor)


# --- ecosystems -------------------------------------------------------------------------------


def _ecosystem_visible(db: Session, actor: Principal, ecosystem_id: int) -> bool:
    if actor.is_platform_admin:
        return True
    return bool(db.scalar(select(exists().where(
        EcosystemMembership.ecosystem_id == ecosystem_id,
        EcosystemMembership.enterprise_id == actor.enterprise_id))))


def member_counts(db: Session, ecosystem_ids: Sequence[int]) -> dict[int, int]:
    if not ecosystem_ids:
        return {}
    rows = db.execute(select(EcosystemMembership.ecosystem_id, func.count())
                      .where(EcosystemMembership.ecosystem_id.in_(ecosystem_ids))
                      .group_by(EcosystemMembership.ecosystem_id)).all()
    return {int(eid): int(n) for eid, n in rows}


def list_ecosystems(db: Session, *, actor: Principal, page: PageParams, q: str | None = None,
                    industry: str | None = None) -> tuple[list[Ecosystem], str | None]:
    actor.require("ecosystem:read")
    stmt = select(Ecosystem)
    if not actor.is_platform_admin:
        stmt = stmt.where(Ecosystem.id.in_(select(EcosystemMembership.ecosystem_id)
                                           .where(EcosystemMembership.enterprise_id == actor.enterprise_id)))
    if industry:
        stmt = stmt.where(Ecosystem.industry == industry)
    if q:
        pattern = _like_pattern(q)
        stmt = stmt.where(or_(Ecosystem.name_en.ilike(pattern, escape="\\"),
                              Ecosystem.name_zh.ilike(pattern, escape="\\"),
                              Ecosystem.slug.ilike(pattern, escape="\\")))
    return paginate(db, stmt, page, key=(Ecosystem.id,))


def get_ecosystem(db: Session, *, actor: Principal, ecosystem_id: int) -> Ecosystem:
    actor.require("ecosystem:read")
    eco = db.get(Ecosystem, ecosystem_id)
    if eco is None or not _ecosystem_visible(db, actor, ecosystem_id):
        raise NotFound("ecosystem", ecosystem_id)
    return eco


def _check_slug_free(db: Session, slug: str, own_id: int | None = None) -> None:
    other = db.scalar(select(Ecosystem.id).where(Ecosystem.slug == slug))
    if other is not None and other != own_id:
        raise Conflict(f"An ecosystem with slug '{slug}' already exists; choose another slug.")


def create_ecosystem(db: Session, *, actor: Principal, data: EcosystemCreate, ip: str = "") -> Ecosystem:
    actor.require("ecosystem:write")
    if not actor.is_platform_admin:
        raise Forbidden("Only a platform admin can create an ecosystem.")
    _check_slug_free(db, data.slug)
    eco = Ecosystem(**data.model_dump())
    _flush_unique(db, f"An ecosystem with slug '{data.slug}' already exists; choose another slug.", eco)
    audit.record(db, actor=actor, action="create", entity_type="ecosystem", entity_id=eco.id,
                 after=eco, ip=ip)
    return eco


def update_ecosystem(db: Session, *, actor: Principal, ecosystem_id: int, data: EcosystemUpdate,
                     ip: str = "") -> Ecosystem:
    eco = get_ecosystem(db, actor=actor, ecosystem_id=ecosystem_id)
    actor.require("ecosystem:write")
    if not actor.is_platform_admin and ecosystem_id not in actor.stewarded_ecosystem_ids:
        raise Forbidden("Only a platform admin or a steward of this ecosystem can edit it.")
    changes = data.model_dump(exclude_unset=True)
    if changes.get("slug"):
        _check_slug_free(db, changes["slug"], own_id=eco.id)
    before = audit.snapshot(eco)
    _apply(eco, changes)
    _flush_unique(db, f"An ecosystem with slug '{eco.slug}' already exists; choose another slug.")
    audit.record(db, actor=actor, action="update", entity_type="ecosystem", entity_id=eco.id,
                 before=before, after=eco, ip=ip)
    return eco


def delete_ecosystem(db: Session, *, actor: Principal, ecosystem_id: int, cascade: bool = False,
                     ip: str = "") -> None:
    eco = get_ecosystem(db, actor=actor, ecosystem_id=ecosystem_id)
    if not actor.is_platform_admin:
        raise Forbidden("Only a platform admin can delete an ecosystem.")
    members = _count(db, EcosystemMembership, EcosystemMembership.ecosystem_id == eco.id)
    if members and not cascade:
        raise Conflict(f"Ecosystem '{eco.slug}' still has {members} member enterprise(s); remove them "
                       "first or delete with ?cascade=true (the enterprises stay, only their membership goes).")
    before = audit.snapshot(eco)
    db.execute(delete(EcosystemMembership).where(EcosystemMembership.ecosystem_id == eco.id))
    db.execute(delete(Ecosystem).where(Ecosystem.id == eco.id))
    db.expunge(eco)
    audit.record(db, actor=actor, action="delete", entity_type="ecosystem", entity_id=ecosystem_id,
                 before=before, ip=ip)


def _require_steward_of(actor: Principal, ecosystem_id: int) -> None:
    if not (actor.is_platform_admin or (ecosystem_id in actor.stewarded_ecosystem_ids
                                        and actor.can("ecosystem:write"))):
        raise Forbidden("Only a platform admin or a steward of this ecosystem can change its members.")


def set_membership(db: Session, *, actor: Principal, ecosystem_id: int, enterprise_id: int,
                   role: MembershipRole, ip: str = "") -> EcosystemMembership:
    """Adds an enterprise to an ecosystem or changes its role there (co-builder or member).
    Stewards change the roles of their ecosystem's members; only a platform admin brings in an
    enterprise that is not a member yet (membership shows its public fields to the stewards)."""
    get_ecosystem(db, actor=actor, ecosystem_id=ecosystem_id)
    _require_steward_of(actor, ecosystem_id)
    membership = db.scalar(select(EcosystemMembership).where(
        EcosystemMembership.ecosystem_id == ecosystem_id, EcosystemMembership.enterprise_id == enterprise_id))
    if membership is None:
        if not actor.is_platform_admin:
            raise NotFound("enterprise", enterprise_id)
        _check_enterprise_exists(db, enterprise_id)
        membership = EcosystemMembership(ecosystem_id=ecosystem_id, enterprise_id=enterprise_id, role=role)
        db.add(membership)
        db.flush()
        audit.record(db, actor=actor, action="create", entity_type="ecosystem_membership",
                     entity_id=membership.id, after=membership, enterprise_id=enterprise_id, ip=ip)
        return membership
    if membership.role != role:
        before = audit.snapshot(membership)
        membership.role = role
        db.flush()
        audit.record(db, actor=actor, action="update", entity_type="ecosystem_membership",
                     entity_id=membership.id, before=before, after=membership, enterprise_id=enterprise_id, ip=ip)
    return membership


def remove_membership(db: Session, *, actor: Principal, ecosystem_id: int, enterprise_id: int,
                      ip: str = "") -> None:
    get_ecosystem(db, actor=actor, ecosystem_id=ecosystem_id)
    _require_steward_of(actor, ecosystem_id)
    membership = db.scalar(select(EcosystemMembership).where(
        EcosystemMembership.ecosystem_id == ecosystem_id, EcosystemMembership.enterprise_id == enterprise_id))
    if membership is None:
        raise NotFound("member enterprise", enterprise_id)
    if enterprise_id == actor.enterprise_id and not actor.is_platform_admin:
        raise Conflict("You cannot remove your own enterprise from the ecosystem you steward.")
    before = audit.snapshot(membership)
    db.execute(delete(EcosystemMembership).where(EcosystemMembership.id == membership.id))
    db.expunge(membership)
    audit.record(db, actor=actor, action="delete", entity_type="ecosystem_membership", entity_id=before["id"],
                 before=before, enterprise_id=enterprise_id, ip=ip)


# --- enterprises ------------------------------------------------------------------------------


def _stewarded_member_ids(actor: Principal) -> Any:
    return select(_MEMBERSHIPS.c.enterprise_id).where(
        _MEMBERSHIPS.c.ecosystem_id.in_(sorted(actor.stewarded_ecosystem_ids)))


def _enterprise_visible(db: Session, actor: Principal, enterprise_id: int) -> bool:
    if actor.sees_enterprise(enterprise_id):
        return True
    if actor.stewarded_ecosystem_ids and actor.can("ecosystem:members"):
        return bool(db.scalar(select(exists().where(
            EcosystemMembership.enterprise_id == enterprise_id,
            EcosystemMembership.ecosystem_id.in_(sorted(actor.stewarded_ecosystem_ids))))))
    return False


# The SQLite FTS5 table of enterprise names (migration 0001), for joins.
_enterprises_fts = table("enterprises_fts", column("rowid", Integer))
_FTS_MATCH = text("enterprises_fts MATCH :enterprise_q")  # parsed once; bound per search


def _uses_fts(db: Session, q: str | None) -> bool:
    # Trigram indexes cannot serve patterns under 3 characters; those scan, which stays cheap.
    return bool(q) and len(q or "") >= 3 and db.get_bind().dialect.name == "sqlite"


def _uses_search_windows(db: Session, q: str | None, actor: Principal) -> bool:
    # An actor who sees one enterprise gets it by primary key; nothing to choose there.
    return (bool(q) and len(q or "") >= 3 and db.get_bind().dialect.name == "postgresql"
            and (actor.is_platform_admin or bool(actor.stewarded_ecosystem_ids and actor.can("ecosystem:members"))))


# What an enterprise view shows (EnterpriseOut's own fields). The enterprise reads below are Core
# statements on the tables, read as plain rows: ORM entities, or even ORM attributes in a
# statement, put every row of a page through the ORM's loading machinery, which a read never
# needs. Core statements do not autoflush, so they flush first what the unit of work holds.
ENTERPRISE_VIEW_FIELDS = ("id", "name", "country", "isic_class", "size_class", "timezone", "limits",
                          "created_at", "updated_at")
_ENTERPRISES: Table = Enterprise.__table__  # type: ignore[assignment]
_MEMBERSHIPS: Table = EcosystemMembership.__table__  # type: ignore[assignment]


def _enterprise_view_columns(ent: Any) -> list[Any]:
    """The view's columns of the enterprise table or of an alias of it (their `.c`)."""
    return [getattr(ent, name) for name in ENTERPRISE_VIEW_FIELDS]


def list_enterprises(db: Session, *, actor: Principal, page: PageParams, q: str | None = None,
                     country: str | None = None, size_class: str | None = None,
                     isic_class: str | None = None, ecosystem_id: int | None = None,
                     ) -> tuple[list[Row[Any]], str | None]:
    """Name search goes through the database's own trigram index (migration 0001): SQLite FTS5
    with the trigram tokenizer, PostgreSQL pg_trgm GIN; both answer case-insensitive substring
    matches. On SQLite the page is read from the FTS index in rowid (= id) order and stops after
    `limit` hits, instead of collecting every match first (a common word matches most names). On
    PostgreSQL, tenancy.search chooses per query between walking the primary key and sorting the
    trigram index's matches. The rows carry ENTERPRISE_VIEW_FIELDS as attributes."""
    actor.require("enterprise:read")
    fts = bool(q) and _uses_fts(db, q)

    def conditions(ent: Any) -> list[Any]:
        where: list[Any] = []
        if q and not fts:
            where.append(ent.name.ilike(_like_pattern(q), escape="\\"))
        if not actor.is_platform_admin:
            if actor.stewarded_ecosystem_ids and actor.can("ecosystem:members"):
                where.append(or_(ent.id == actor.enterprise_id, ent.id.in_(_stewarded_member_ids(actor))))
            else:
                where.append(ent.id == actor.enterprise_id)
        if country:
            where.append(ent.country == country.upper())
        if size_class:
            where.append(ent.size_class == size_class)
        if isic_class:
            where.append(ent.isic_class == isic_class)
        if ecosystem_id is not None:
            where.append(ent.id.in_(select(_MEMBERSHIPS.c.enterprise_id)
                                    .where(_MEMBERSHIPS.c.ecosystem_id == ecosystem_id)))
        return where

    db.flush()
    if _uses_search_windows(db, q, actor):
        return enterprise_search_page(db, conditions=conditions, columns=_enterprise_view_columns, page=page)
    ent = _ENTERPRISES.c
    stmt = select(*_enterprise_view_columns(ent)).where(*conditions(ent))
    key: tuple[Any, ...] = (ent.id,)
    if q and fts:
        phrase = '"' + q.replace('"', '""') + '"'
        stmt = stmt.join(_enterprises_fts, _enterprises_fts.c.rowid == ent.id).where(
            _FTS_MATCH.bindparams(enterprise_q=phrase))
        key = (_enterprises_fts.c.rowid,)
    return paginate(db, stmt, page, key=key, key_attrs=("id",), scalars=False)


def get_enterprise(db: Session, *, actor: Principal, enterprise_id: int) -> Enterprise:
    actor.require("enterprise:read")
    ent = db.get(Enterprise, enterprise_id)
    if ent is None or not _enterprise_visible(db, actor, enterprise_id):
        raise NotFound("enterprise", enterprise_id)
    return ent


@lru_cache(maxsize=1)
def _enterprise_by_id() -> Any:
    return select(*_enterprise_view_columns(_ENTERPRISES.c)).where(_ENTERPRISES.c.id == bindparam("id"))


@lru_cache(maxsize=2)
def _memberships_of(own_ecosystems_only: bool) -> Any:
    """(enterprise, ecosystem, role) of the enterprises `ids`, in the ecosystems enterprise `own`
    belongs to if own_ecosystems_only."""
    m = _MEMBERSHIPS.c
    stmt = select(m.enterprise_id, m.ecosystem_id, m.role).where(m.enterprise_id.in_(bindparam("ids", expanding=True)))
    if own_ecosystems_only:
        stmt = stmt.where(m.ecosystem_id.in_(select(m.ecosystem_id).where(m.enterprise_id == bindparam("own"))))
    return stmt.order_by(m.id)


def enterprise_row(db: Session, *, actor: Principal, enterprise_id: int) -> Row[Any]:
    """One enterprise as get_enterprise() finds it (same scope, same 404), read as a row of
    ENTERPRISE_VIEW_FIELDS for its view."""
    actor.require("enterprise:read")
    db.flush()
    row = db.execute(_enterprise_by_id(), {"id": enterprise_id}).first()
    if row is None or not _enterprise_visible(db, actor, enterprise_id):
        raise NotFound("enterprise", enterprise_id)
    return row


def enterprise_view_dicts(db: Session, *, actor: Principal, rows: Sequence[Row[Any]]) -> list[dict[str, Any]]:
    """API views of enterprises (rows of ENTERPRISE_VIEW_FIELDS) as plain dicts in EnterpriseOut's
    field order: private fields only for the enterprise's own people and platform admins (null
    for others); memberships only in ecosystems the actor may see."""
    memberships: dict[int, list[dict[str, Any]]] = {row[0]: [] for row in rows}
    admin = actor.is_platform_admin
    if memberships:
        db.flush()
        params: dict[str, Any] = {"ids": list(memberships)} | ({} if admin else {"own": actor.enterprise_id})
        for enterprise_id, ecosystem_id, role in db.execute(_memberships_of(not admin), params):
            memberships[enterprise_id].append({"ecosystem_id": ecosystem_id, "role": role})
    out = []
    for id_, name, country, isic_class, size_class, timezone, limits, created_at, updated_at in rows:
        view = {"id": id_, "name": name, "country": country, "isic_class": isic_class, "size_class": size_class,
                "memberships": memberships[id_], "timezone": None, "limits": None, "created_at": None,
                "updated_at": None}
        if admin or actor.sees_enterprise(id_):
            view |= {"timezone": timezone, "limits": dict(limits or {}), "created_at": created_at,
                     "updated_at": updated_at}
        out.append(view)
    return out


def enterprise_views(db: Session, *, actor: Principal, rows: Sequence[Enterprise]) -> list[EnterpriseOut]:
    """enterprise_view_dicts() of ORM enterprises, as EnterpriseOut models."""
    as_rows = [tuple(getattr(e, name) for name in ENTERPRISE_VIEW_FIELDS) for e in rows]
    return [EnterpriseOut.model_validate(view)
            for view in enterprise_view_dicts(db, actor=actor, rows=as_rows)]  # type: ignore[arg-type]


def create_enterprise(db: Session, *, actor: Principal, data: EnterpriseCreate, ip: str = "") -> Enterprise:
    if not actor.is_platform_admin and Role.ecosystem_steward.value not in actor.roles:
        raise Forbidden("Only a platform admin or an ecosystem steward can create an enterprise.")
    ecosystem_id = data.ecosystem_id
    if not actor.is_platform_admin:
        stewarded = sorted(actor.stewarded_ecosystem_ids)
        if ecosystem_id is None:
            if len(stewarded) != 1:
                raise Unprocessable("ecosystem_id: you steward several ecosystems (or none); say which one "
                                    "the new enterprise joins.",
                                    errors=[{"field": "ecosystem_id", "message": "required", "type": "missing"}])
            ecosystem_id = stewarded[0]
        elif ecosystem_id not in stewarded:
            raise NotFound("ecosystem", ecosystem_id)
    if ecosystem_id is not None and db.get(Ecosystem, ecosystem_id) is None:
        raise NotFound("ecosystem", ecosystem_id)
    ent = Enterprise(name=data.name, country=data.country, isic_class=data.isic_class,
                     size_class=data.size_class, timezone=data.timezone, limits={})
    db.add(ent)
    db.flush()
    after = audit.snapshot(ent)
    if ecosystem_id is not None:
        db.add(EcosystemMembership(ecosystem_id=ecosystem_id, enterprise_id=ent.id, role=data.membership_role))
        db.flush()
        after["memberships"] = [{"ecosystem_id": ecosystem_id, "role": data.membership_role.value}]
    audit.record(db, actor=actor, action="create", entity_type="enterprise", entity_id=ent.id,
                 after=after, enterprise_id=ent.id, ip=ip)
    return ent


def update_enterprise(db: Session, *, actor: Principal, enterprise_id: int, data: EnterpriseUpdate,
                      ip: str = "") -> Enterprise:
    ent = get_enterprise(db, actor=actor, enterprise_id=enterprise_id)
    if not (actor.is_platform_admin or (ent.id == actor.enterprise_id and actor.can("enterprise:write"))):
        raise Forbidden("Only this enterprise's admin or a platform admin can edit it.")
    changes = data.model_dump(exclude_unset=True, exclude={"limits"})
    if data.limits is not None:
        if not actor.is_platform_admin:
            raise Forbidden("Only a platform admin can change an enterprise's limits.")
        changes["limits"] = data.limits.model_dump(exclude_none=True)
    before = audit.snapshot(ent)
    _apply(ent, changes)
    db.flush()
    audit.record(db, actor=actor, action="update", entity_type="enterprise", entity_id=ent.id,
                 before=before, after=ent, enterprise_id=ent.id, ip=ip)
    return ent


def delete_enterprise(db: Session, *, actor: Principal, enterprise_id: int, cascade: bool = False,
                      ip: str = "") -> None:
    ent = get_enterprise(db, actor=actor, enterprise_id=enterprise_id)
    if not actor.is_platform_admin:
        raise Forbidden("Only a platform admin can delete an enterprise.")
    if ent.id == actor.enterprise_id:
        raise Conflict("You cannot delete the enterprise your own account belongs to.")
    sites = _count(db, Site, Site.enterprise_id == ent.id)
    users = _count(db, User, User.enterprise_id == ent.id)
    if (sites or users) and not cascade:
        raise Conflict(f"Enterprise '{ent.name}' still has {sites} site(s) and {users} user(s); delete "
                       "them first or delete with ?cascade=true.")
    before = audit.snapshot(ent)
    _delete_referenced(db, delete(Enterprise).where(Enterprise.id == ent.id), f"Enterprise '{ent.name}'")
    db.expunge(ent)
    # The enterprise's own audit trail goes with it (ON DELETE CASCADE), so this event is kept at
    # platform level.
    audit.record(db, actor=actor, action="delete", entity_type="enterprise", entity_id=enterprise_id,
                 before=before, enterprise_id=actor.enterprise_id, ip=ip)


# --- plant: sites, areas, lines, workstations, equipment -----------------------------------------


def _require_read_plant(actor: Principal) -> None:
    actor.require("plant:read")


def _delete_plant(db: Session, *, actor: Principal, row: Any, kind: str,
                  children: Sequence[tuple[Any, Any, str]], cascade: bool, ip: str) -> None:
    counts = [(label, _count(db, model, fk == row.id)) for model, fk, label in children]
    blocking = [(label, n) for label, n in counts if n]
    if blocking and not cascade:
        listing = ", ".join(f"{n} {label}" for label, n in blocking)
        raise Conflict(f"This {kind} still has {listing}; delete them first or delete with ?cascade=true.")
    before = audit.snapshot(row)
    model = type(row)
    _delete_referenced(db, delete(model).where(model.id == row.id), f"This {kind}")
    db.expunge(row)
    audit.record(db, actor=actor, action="delete", entity_type=kind, entity_id=before["id"],
                 before=before, enterprise_id=before["enterprise_id"], ip=ip)


def _create_plant(db: Session, *, actor: Principal, row: Any, kind: str, ip: str) -> Any:
    db.add(row)
    db.flush()
    audit.record(db, actor=actor, action="create", entity_type=kind, entity_id=row.id, after=row,
                 enterprise_id=row.enterprise_id, ip=ip)
    return row


def _update_plant(db: Session, *, actor: Principal, row: Any, kind: str, changes: dict[str, Any],
                  nullable: Iterable[str] = (), ip: str) -> Any:
    before = audit.snapshot(row)
    _apply(row, changes, nullable)
    db.flush()
    audit.record(db, actor=actor, action="update", entity_type=kind, entity_id=row.id,
                 before=before, after=row, enterprise_id=row.enterprise_id, ip=ip)
    return row


def _name_filter(model: Any, q: str | None) -> Any:
    if not q:
        return True
    pattern = _like_pattern(q)
    return or_(model.name.ilike(pattern, escape="\\"), model.code.ilike(pattern, escape="\\"))


# sites

def list_sites(db: Session, *, actor: Principal, page: PageParams, enterprise_id: int | None = None,
               q: str | None = None) -> tuple[list[Site], str | None]:
    _require_read_plant(actor)
    stmt = _scope(select(Site), Site, actor, enterprise_id).where(_name_filter(Site, q))
    return paginate(db, stmt, page, key=(Site.id,))


def get_site(db: Session, *, actor: Principal, site_id: int) -> Site:
    _require_read_plant(actor)
    return _get_scoped(db, Site, "site", site_id, actor)


def create_site(db: Session, *, actor: Principal, data: SiteCreate, ip: str = "") -> Site:
    actor.require("plant:write")
    enterprise_id = _target_enterprise(db, actor, data.enterprise_id)
    row = Site(enterprise_id=enterprise_id, **data.model_dump(exclude={"enterprise_id"}))
    return _create_plant(db, actor=actor, row=row, kind="site", ip=ip)


def update_site(db: Session, *, actor: Principal, site_id: int, data: SiteUpdate, ip: str = "") -> Site:
    row = get_site(db, actor=actor, site_id=site_id)
    actor.require("plant:write")
    return _update_plant(db, actor=actor, row=row, kind="site", changes=data.model_dump(exclude_unset=True),
                         nullable=("latitude", "longitude"), ip=ip)


def delete_site(db: Session, *, actor: Principal, site_id: int, cascade: bool = False, ip: str = "") -> None:
    row = get_site(db, actor=actor, site_id=site_id)
    actor.require("plant:write")
    _delete_plant(db, actor=actor, row=row, kind="site", cascade=cascade, ip=ip,
                  children=[(Area, Area.site_id, "area(s)"), (Equipment, Equipment.site_id, "equipment")])


# areas

def list_areas(db: Session, *, actor: Principal, page: PageParams, site_id: int | None = None,
               q: str | None = None) -> tuple[list[Area], str | None]:
    _require_read_plant(actor)
    stmt = _scope(select(Area), Area, actor).where(_name_filter(Area, q))
    if site_id is not None:
        stmt = stmt.where(Area.site_id == site_id)
    return paginate(db, stmt, page, key=(Area.id,))


def get_area(db: Session, *, actor: Principal, area_id: int) -> Area:
    _require_read_plant(actor)
    return _get_scoped(db, Area, "area", area_id, actor)


def create_area(db: Session, *, actor: Principal, data: AreaCreate, ip: str = "") -> Area:
    actor.require("plant:write")
    site = get_site(db, actor=actor, site_id=data.site_id)
    row = Area(enterprise_id=site.enterprise_id, site_id=site.id, name=data.name, code=data.code)
    return _create_plant(db, actor=actor, row=row, kind="area", ip=ip)


def update_area(db: Session, *, actor: Principal, area_id: int, data: AreaUpdate, ip: str = "") -> Area:
    row = get_area(db, actor=actor, area_id=area_id)
    actor.require("plant:write")
    return _update_plant(db, actor=actor, row=row, kind="area", changes=data.model_dump(exclude_unset=True), ip=ip)


def delete_area(db: Session, *, actor: Principal, area_id: int, cascade: bool = False, ip: str = "") -> None:
    row = get_area(db, actor=actor, area_id=area_id)
    actor.require("plant:write")
    # Equipment in the area stays (its area is cleared); lines and their workstations go.
    _delete_plant(db, actor=actor, row=row, kind="area", cascade=cascade, ip=ip,
                  children=[(Line, Line.area_id, "line(s)")])


# lines

def list_lines(db: Session, *, actor: Principal, page: PageParams, area_id: int | None = None,
               q: str | None = None) -> tuple[list[Line], str | None]:
    _require_read_plant(actor)
    stmt = _scope(select(Line), Line, actor).where(_name_filter(Line, q))
    if area_id is not None:
        stmt = stmt.where(Line.area_id == area_id)
    return paginate(db, stmt, page, key=(Line.id,))


def get_line(db: Session, *, actor: Principal, line_id: int) -> Line:
    _require_read_plant(actor)
    return _get_scoped(db, Line, "line", line_id, actor)


def create_line(db: Session, *, actor: Principal, data: LineCreate, ip: str = "") -> Line:
    actor.require("plant:write")
    area = get_area(db, actor=actor, area_id=data.area_id)
    row = Line(enterprise_id=area.enterprise_id, area_id=area.id, name=data.name, code=data.code)
    return _create_plant(db, actor=actor, row=row, kind="line", ip=ip)


def update_line(db: Session, *, actor: Principal, line_id: int, data: LineUpdate, ip: str = "") -> Line:
    row = get_line(db, actor=actor, line_id=line_id)
    actor.require("plant:write")
    return _update_plant(db, actor=actor, row=row, kind="line", changes=data.model_dump(exclude_unset=True), ip=ip)


def delete_line(db: Session, *, actor: Principal, line_id: int, cascade: bool = False, ip: str = "") -> None:
    row = get_line(db, actor=actor, line_id=line_id)
    actor.require("plant:write")
    _delete_plant(db, actor=actor, row=row, kind="line", cascade=cascade, ip=ip,
                  children=[(Workstation, Workstation.line_id, "workstation(s)")])


# workstations

def list_workstations(db: Session, *, actor: Principal, page: PageParams, line_id: int | None = None,
                      q: str | None = None) -> tuple[list[Workstation], str | None]:
    _require_read_plant(actor)
    stmt = _scope(select(Workstation), Workstation, actor).where(_name_filter(Workstation, q))
    if line_id is not None:
        stmt = stmt.where(Workstation.line_id == line_id)
    return paginate(db, stmt, page, key=(Workstation.id,))


def get_workstation(db: Session, *, actor: Principal, workstation_id: int) -> Workstation:
    _require_read_plant(actor)
    return _get_scoped(db, Workstation, "workstation", workstation_id, actor)


def create_workstation(db: Session, *, actor: Principal, data: WorkstationCreate, ip: str = "") -> Workstation:
    actor.require("plant:write")
    line = get_line(db, actor=actor, line_id=data.line_id)
    row = Workstation(enterprise_id=line.enterprise_id, line_id=line.id, name=data.name, code=data.code,
                      position=data.position)
    return _create_plant(db, actor=actor, row=row, kind="workstation", ip=ip)


def update_workstation(db: Session, *, actor: Principal, workstation_id: int, data: WorkstationUpdate,
                       ip: str = "") -> Workstation:
    row = get_workstation(db, actor=actor, workstation_id=workstation_id)
    actor.require("plant:write")
    return _update_plant(db, actor=actor, row=row, kind="workstation",
                         changes=data.model_dump(exclude_unset=True), ip=ip)


def delete_workstation(db: Session, *, actor: Principal, workstation_id: int, cascade: bool = False,
                       ip: str = "") -> None:
    row = get_workstation(db, actor=actor, workstation_id=workstation_id)
    actor.require("plant:write")
    _delete_plant(db, actor=actor, row=row, kind="workstation", cascade=cascade, ip=ip, children=[])


# equipment

def _resolve_equipment_place(db: Session, actor: Principal, *, site_id: int, area_id: int | None,
                             line_id: int | None, workstation_id: int | None) -> dict[str, int | None]:
    """Checks that the equipment's place is one consistent branch of one site's tree, filling in
    the levels above the most specific one given (a workstation implies its line and area)."""
    site = get_site(db, actor=actor, site_id=site_id)
    ws = get_workstation(db, actor=actor, workstation_id=workstation_id) if workstation_id else None
    if ws is not None:
        if line_id is not None and line_id != ws.line_id:
            raise Unprocessable(f"workstation_id: workstation {ws.id} is not on line {line_id}.")
        line_id = ws.line_id
    line = get_line(db, actor=actor, line_id=line_id) if line_id else None
    if line is not None:
        if area_id is not None and area_id != line.area_id:
            raise Unprocessable(f"line_id: line {line.id} is not in area {area_id}.")
        area_id = line.area_id
    area = get_area(db, actor=actor, area_id=area_id) if area_id else None
    if area is not None and area.site_id != site.id:
        raise Unprocessable(f"area_id: area {area.id} is not in site {site.id}.")
    return {"site_id": site.id, "area_id": area_id, "line_id": line_id, "workstation_id": workstation_id,
            "enterprise_id": site.enterprise_id}


def list_equipment(db: Session, *, actor: Principal, page: PageParams, site_id: int | None = None,
                   area_id: int | None = None, line_id: int | None = None,
                   workstation_id: int | None = None, equipment_type_iri: str | None = None,
                   q: str | None = None) -> tuple[list[Equipment], str | None]:
    _require_read_plant(actor)
    stmt = _scope(select(Equipment), Equipment, actor)
    for col, value in ((Equipment.site_id, site_id), (Equipment.area_id, area_id),
                       (Equipment.line_id, line_id), (Equipment.workstation_id, workstation_id),
                       (Equipment.equipment_type_iri, equipment_type_iri)):
        if value is not None:
            stmt = stmt.where(col == value)
    if q:
        pattern = _like_pattern(q)
        stmt = stmt.where(or_(Equipment.name.ilike(pattern, escape="\\"), Equipment.tag.ilike(pattern, escape="\\")))
    return paginate(db, stmt, page, key=(Equipment.id,))


def get_equipment(db: Session, *, actor: Principal, equipment_id: int) -> Equipment:
    _require_read_plant(actor)
    return _get_scoped(db, Equipment, "equipment", equipment_id, actor)


def create_equipment(db: Session, *, actor: Principal, data: EquipmentCreate, ip: str = "") -> Equipment:
    actor.require("plant:write")
    place = _resolve_equipment_place(db, actor, site_id=data.site_id, area_id=data.area_id,
                                     line_id=data.line_id, workstation_id=data.workstation_id)
    fields = data.model_dump(exclude={"site_id", "area_id", "line_id", "workstation_id"})
    row = Equipment(**place, **fields)
    return _create_plant(db, actor=actor, row=row, kind="equipment", ip=ip)


def update_equipment(db: Session, *, actor: Principal, equipment_id: int, data: EquipmentUpdate,
                     ip: str = "") -> Equipment:
    row = get_equipment(db, actor=actor, equipment_id=equipment_id)
    actor.require("plant:write")
    changes = data.model_dump(exclude_unset=True)
    moved = {"area_id", "line_id", "workstation_id"} & set(changes)
    if moved:
        workstation_id = changes.get("workstation_id", row.workstation_id)
        line_id = changes.get("line_id", row.line_id)
        area_id = changes.get("area_id", row.area_id)
        # A level moved to a new place re-derives the levels above it and clears the levels
        # below it, unless the request gives those too; clearing a level keeps the ones above.
        if "workstation_id" in moved and workstation_id is not None:
            line_id = changes.get("line_id")
            area_id = changes.get("area_id")
        if "line_id" in moved:
            if line_id is not None and "area_id" not in moved:
                area_id = None
            if "workstation_id" not in moved:
                workstation_id = None
        if "area_id" in moved:
            if "line_id" not in moved and not (workstation_id is not None and "workstation_id" in moved):
                line_id = None
            if "workstation_id" not in moved:
                workstation_id = None
        place = _resolve_equipment_place(db, actor, site_id=row.site_id, area_id=area_id, line_id=line_id,
                                         workstation_id=workstation_id)
        place.pop("enterprise_id")
        changes.update(place)
    return _update_plant(db, actor=actor, row=row, kind="equipment", changes=changes,
                         nullable=("area_id", "line_id", "workstation_id"), ip=ip)


def delete_equipment(db: Session, *, actor: Principal, equipment_id: int, ip: str = "") -> None:
    row = get_equipment(db, actor=actor, equipment_id=equipment_id)
    actor.require("plant:write")
    _delete_plant(db, actor=actor, row=row, kind="equipment", cascade=False, ip=ip, children=[])


# --- users ------------------------------------------------------------------------------------


# Roles a role may hand out on top of its own: an enterprise admin staffs the plant, but only
# someone who already holds platform_admin or ecosystem_steward can grant those.
_TENANT_ROLES = frozenset({Role.enterprise_admin.value, Role.engineer.value, Role.safety_officer.value,
                           Role.operator.value, Role.customer.value})
GRANTS: dict[str, frozenset[str]] = {Role.enterprise_admin.value: _TENANT_ROLES}


def _grantable(actor: Principal) -> set[str]:
    if actor.is_platform_admin:
        return {r.value for r in Role}
    out = set(actor.roles)
    for role in actor.roles:
        out |= GRANTS.get(role, frozenset())
    return out


def _check_grant(actor: Principal, roles: Iterable[str]) -> None:
    beyond = sorted(set(roles) - _grantable(actor))
    if beyond:
        raise Forbidden(f"You cannot grant role(s) you do not have yourself: {', '.join(beyond)}.")


def _check_manage(actor: Principal, user: User) -> None:
    beyond = sorted(set(user.roles) - _grantable(actor))
    if beyond:
        raise Forbidden(f"This user has role(s) you do not have ({', '.join(beyond)}); only someone "
                        "with those roles can change them.")


def _check_email_free(db: Session, email: str, own_id: int | None = None) -> None:
    other = db.scalar(select(User.id).where(User.email == email))
    if other is not None and other != own_id:
        raise Conflict(f"A user with e-mail {email} already exists.")


def list_users(db: Session, *, actor: Principal, page: PageParams, role: Role | None = None,
               q: str | None = None, is_active: bool | None = None, enterprise_id: int | None = None,
               ) -> tuple[list[User], str | None]:
    actor.require("users:read")
    stmt = _scope(select(User), User, actor, enterprise_id)
    if role is not None:
        # Portable "JSON array contains": the serialised list holds each role quoted.
        stmt = stmt.where(cast(User.roles, String).like(f'%"{role.value}"%'))
    if is_active is not None:
        stmt = stmt.where(User.is_active == is_active)
    if q:
        pattern = _like_pattern(q)
        stmt = stmt.where(or_(User.email.ilike(pattern, escape="\\"), User.full_name.ilike(pattern, escape="\\")))
    return paginate(db, stmt, page, key=(User.id,))


def get_user(db: Session, *, actor: Principal, user_id: int) -> User:
    actor.require("users:read")
    return _get_scoped(db, User, "user", user_id, actor)


def create_user(db: Session, *, actor: Principal, data: UserCreate, ip: str = "") -> User:
    actor.require("users:write")
    enterprise_id = _target_enterprise(db, actor, data.enterprise_id)
    roles = [r.value for r in data.roles]
    _check_grant(actor, roles)
    email = str(data.email).lower()
    _check_email_free(db, email)
    user = User(enterprise_id=enterprise_id, email=email, full_name=data.full_name,
                password_hash=hash_password(data.password), roles=roles, locale=data.locale,
                is_active=True, token_version=0, failed_login_count=0)
    _flush_unique(db, f"A user with e-mail {email} already exists.", user)
    audit.record(db, actor=actor, action="create", entity_type="user", entity_id=user.id, after=user,
                 enterprise_id=enterprise_id, ip=ip)
    return user


def update_user(db: Session, *, actor: Principal, user_id: int, data: UserUpdate, ip: str = "") -> User:
    user = get_user(db, actor=actor, user_id=user_id)
    actor.require("users:write")
    _check_manage(actor, user)
    changes = data.model_dump(exclude_unset=True)
    before = audit.snapshot(user)
    if changes.get("roles") is not None:
        roles = [Role(r).value for r in changes["roles"]]
        _check_grant(actor, roles)
        user.roles = roles
    if changes.get("email") is not None:
        email = str(changes["email"]).lower()
        _check_email_free(db, email, own_id=user.id)
        user.email = email
    revoke = False
    if changes.get("password") is not None:
        user.password_hash = hash_password(changes["password"])
        revoke = True
    if changes.get("is_active") is not None and changes["is_active"] != user.is_active:
        if not changes["is_active"] and user.id == actor.user_id:
            raise Conflict("You cannot deactivate your own account.")
        user.is_active = changes["is_active"]
        revoke = revoke or not user.is_active
    if revoke:
        user.token_version += 1
    _apply(user, {k: changes[k] for k in ("full_name", "locale") if k in changes})
    _flush_unique(db, f"A user with e-mail {user.email} already exists.")
    audit.record(db, actor=actor, action="update", entity_type="user", entity_id=user.id,
                 before=before, after=user, enterprise_id=user.enterprise_id, ip=ip)
    return user


def delete_user(db: Session, *, actor: Principal, user_id: int, ip: str = "") -> None:
    user = get_user(db, actor=actor, user_id=user_id)
    actor.require("users:write")
    _check_manage(actor, user)
    if user.id == actor.user_id:
        raise Conflict("You cannot delete your own account.")
    before = audit.snapshot(user)
    _delete_referenced(db, delete(User).where(User.id == user.id), f"User {user.email}")
    db.expunge(user)
    audit.record(db, actor=actor, action="delete", entity_type="user", entity_id=user_id, before=before,
                 enterprise_id=before["enterprise_id"], ip=ip)


# --- API keys ---------------------------------------------------------------------------------


def _api_key_scope(stmt: Any, actor: Principal) -> Any:
    stmt = _scope(stmt, ApiKey, actor)
    if not actor.can("users:write"):
        # Without user admin rights one sees only one's own keys.
        stmt = stmt.where(ApiKey.user_id == actor.user_id)
    return stmt


def list_api_keys(db: Session, *, actor: Principal, page: PageParams, user_id: int | None = None,
                  include_revoked: bool = True) -> tuple[list[ApiKey], str | None]:
    actor.require("apikeys:write")
    stmt = _api_key_scope(select(ApiKey), actor)
    if user_id is not None:
        stmt = stmt.where(ApiKey.user_id == user_id)
    if not include_revoked:
        stmt = stmt.where(ApiKey.revoked_at.is_(None))
    return paginate(db, stmt, page, key=(ApiKey.id,))


def get_api_key(db: Session, *, actor: Principal, api_key_id: int) -> ApiKey:
    actor.require("apikeys:write")
    key = db.scalar(_api_key_scope(select(ApiKey).where(ApiKey.id == api_key_id), actor))
    if key is None:
        raise NotFound("API key", api_key_id)
    return key


def create_api_key(db: Session, *, actor: Principal, data: ApiKeyCreate, ip: str = "") -> tuple[ApiKey, str]:
    """Creates a key for the acting user; returns the row and the secret (shown only once)."""
    actor.require("apikeys:write")
    if actor.user_id is None:
        raise Forbidden("API keys belong to a user; sign in as one to create a key.")
    roles = [r.value for r in data.roles]
    beyond = sorted(set(roles) - set(actor.roles))
    if beyond:
        raise Forbidden(f"A key can only carry roles you have; you do not have: {', '.join(beyond)}.")
    if data.expires_at is not None and data.expires_at <= utcnow():
        raise Unprocessable("expires_at: must be in the future.",
                            errors=[{"field": "expires_at", "message": "in the past", "type": "value_error"}])
    secret = new_api_key_secret()
    key = ApiKey(enterprise_id=actor.enterprise_id, user_id=actor.user_id, name=data.name,
                 prefix=secret[:11], key_hash=hash_api_key(secret), roles=roles or sorted(actor.roles),
                 expires_at=data.expires_at)
    db.add(key)
    db.flush()
    audit.record(db, actor=actor, action="create", entity_type="api_key", entity_id=key.id, after=key,
                 enterprise_id=key.enterprise_id, ip=ip)
    return key, secret


def update_api_key(db: Session, *, actor: Principal, api_key_id: int, data: ApiKeyUpdate, ip: str = "") -> ApiKey:
    key = get_api_key(db, actor=actor, api_key_id=api_key_id)
    changes = data.model_dump(exclude_unset=True)
    before = audit.snapshot(key)
    _apply(key, changes, nullable=("expires_at",))
    db.flush()
    audit.record(db, actor=actor, action="update", entity_type="api_key", entity_id=key.id,
                 before=before, after=key, enterprise_id=key.enterprise_id, ip=ip)
    return key


def revoke_api_key(db: Session, *, actor: Principal, api_key_id: int, ip: str = "") -> ApiKey:
    key = get_api_key(db, actor=actor, api_key_id=api_key_id)
    if key.revoked_at is None:
        before = audit.snapshot(key)
        key.revoked_at = utcnow()
        db.flush()
        audit.record(db, actor=actor, action="revoke", entity_type="api_key", entity_id=key.id,
                     before=before, after=key, enterprise_id=key.enterprise_id, ip=ip)
    return key


# --- audit events -------------------------------------------------------------------------------


def list_audit_events(db: Session, *, actor: Principal, page: PageParams, entity_type: str | None = None,
                      entity_id: str | None = None, action: str | None = None, actor_label: str | None = None,
                      since: datetime | None = None, until: datetime | None = None,
                      enterprise_id: int | None = None) -> tuple[list[AuditEvent], str | None]:
    actor.require("audit:read")
    stmt = _scope(select(AuditEvent), AuditEvent, actor, enterprise_id)
    conditions = []
    for col, value in ((AuditEvent.entity_type, entity_type), (AuditEvent.entity_id, entity_id),
                       (AuditEvent.action, action), (AuditEvent.actor, actor_label)):
        if value is not None:
            conditions.append(col == value)
    if since is not None:
        conditions.append(AuditEvent.at >= since)
    if until is not None:
        conditions.append(AuditEvent.at < until)
    if conditions:
        stmt = stmt.where(and_(*conditions))
    # Newest first: that is what people open an audit log for.
    return paginate(db, stmt, page, key=(AuditEvent.id,), descending=True)


def get_audit_event(db: Session, *, actor: Principal, audit_event_id: int) -> AuditEvent:
    actor.require("audit:read")
    event = db.get(AuditEvent, audit_event_id)
    if event is None or not (actor.is_platform_admin or event.enterprise_id == actor.enterprise_id):
        raise NotFound("audit event", audit_event_id)
    return event
