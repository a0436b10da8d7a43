"""Builders for tenancy rows, written straight through the ORM (fast: one shared password hash),
and helpers to act as a user through the API."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from sqlalchemy.orm import Session

from ecoplat.config import Settings
from ecoplat.tenancy import audit
from ecoplat.tenancy.auth import (
    Principal,
    hash_api_key,
    hash_password,
    issue_tokens,
    new_api_key_secret,
    principal_for_user,
)
from ecoplat.tenancy.models import (
    ApiKey,
    Area,
    Ecosystem,
    EcosystemMembership,
    Enterprise,
    Equipment,
    Line,
    MembershipRole,
    Role,
    Site,
    SizeClass,
    User,
    Workstation,
)

PASSWORD = "correct-horse-battery-staple"
_seq = itertools.count(1)


def _n() -> int:
    return next(_seq)


@lru_cache(maxsize=1)
def password_hash() -> str:
    return hash_password(PASSWORD)


def make_ecosystem(db: Session, **kw: Any) -> Ecosystem:
    n = _n()
    values = {"slug": f"eco-{n}", "name_en": f"Ecosystem {n}", "name_zh": f"生态 {n}",
              "industry": "chlor-alkali", "description": ""} | kw
    eco = Ecosystem(**values)
    db.add(eco)
    db.flush()
    return eco


def make_enterprise(db: Session, *, ecosystem: Ecosystem | None = None,
                    role: MembershipRole = MembershipRole.member, **kw: Any) -> Enterprise:
    n = _n()
    values = {"name": f"Enterprise {n}", "country": "CN", "isic_class": "2011",
              "size_class": SizeClass.small, "timezone": "Asia/Shanghai", "limits": {}} | kw
    ent = Enterprise(**values)
    db.add(ent)
    db.flush()
    if ecosystem is not None:
        db.add(EcosystemMembership(ecosystem_id=ecosystem.id, enterprise_id=ent.id, role=role))
        db.flush()
    return ent


def make_user(db: Session, enterprise: Enterprise, *roles: Role | str, email: str | None = None,
              **kw: Any) -> User:
    n = _n()
    role_values = [Role(r).value for r in roles] or [Role.enterprise_admin.value]
    values = {"full_name": f"User {n}", "locale": "en", "is_active": True, "token_version": 0,
              "failed_login_count": 0} | kw
    user = User(enterprise_id=enterprise.id, email=email or f"user{n}@example.com",
                password_hash=password_hash(), roles=role_values, **values)
    db.add(user)
    db.flush()
    return user


def make_site(db: Session, enterprise: Enterprise, **kw: Any) -> Site:
    site = Site(enterprise_id=enterprise.id, **({"name": f"Site {_n()}", "code": "", "timezone": "UTC",
                                                 "address": ""} | kw))
    db.add(site)
    db.flush()
    return site


def make_area(db: Session, site: Site, **kw: Any) -> Area:
    area = Area(enterprise_id=site.enterprise_id, site_id=site.id, **({"name": f"Area {_n()}", "code": ""} | kw))
    db.add(area)
    db.flush()
    return area


def make_line(db: Session, area: Area, **kw: Any) -> Line:
    line = Line(enterprise_id=area.enterprise_id, area_id=area.id, **({"name": f"Line {_n()}", "code": ""} | kw))
    db.add(line)
    db.flush()
    return line


def make_workstation(db: Session, line: Line, **kw: Any) -> Workstation:
    ws = Workstation(enterprise_id=line.enterprise_id, line_id=line.id,
                     **({"name": f"Workstation {_n()}", "code": "", "position": 0} | kw))
    db.add(ws)
    db.flush()
    return ws


def make_equipment(db: Session, site: Site, *, area: Area | None = None, line: Line | None = None,
                   workstation: Workstation | None = None, **kw: Any) -> Equipment:
    eq = Equipment(enterprise_id=site.enterprise_id, site_id=site.id, area_id=area.id if area else None,
                   line_id=line.id if line else None, workstation_id=workstation.id if workstation else None,
                   **({"name": f"Equipment {_n()}", "tag": f"E-{_n()}", "equipment_type_iri": "",
                       "manufacturer": "", "model": "", "serial_number": ""} | kw))
    db.add(eq)
    db.flush()
    return eq


def make_api_key(db: Session, user: User, **kw: Any) -> tuple[ApiKey, str]:
    secret = new_api_key_secret()
    key = ApiKey(enterprise_id=user.enterprise_id, user_id=user.id, name=f"key {_n()}", prefix=secret[:11],
                 key_hash=hash_api_key(secret), roles=list(user.roles), **kw)
    db.add(key)
    db.flush()
    return key, secret


def principal(db: Session, user: User) -> Principal:
    return principal_for_user(db, user)


def headers_for(settings: Settings, user: User) -> dict[str, str]:
    tokens = issue_tokens(user, secret=settings.resolved_secret_key, access_minutes=5, refresh_days=1)
    return {"Authorization": f"Bearer {tokens['access_token']}"}


@dataclass
class Tree:
    """One enterprise with a full ISA-95 tree, its people and an API key."""

    ecosystem: Ecosystem
    enterprise: Enterprise
    admin: User
    engineer: User
    operator: User
    site: Site
    area: Area
    line: Line
    workstation: Workstation
    equipment: Equipment
    api_key: ApiKey
    api_key_secret: str
    audit_event_id: int
    headers: dict[str, str] = field(default_factory=dict)


def make_tree(db: Session, settings: Settings, *, ecosystem: Ecosystem | None = None,
              admin_roles: tuple[Role, ...] = (Role.enterprise_admin,)) -> Tree:
    eco = ecosystem or make_ecosystem(db)
    ent = make_enterprise(db, ecosystem=eco)
    admin = make_user(db, ent, *admin_roles)
    engineer = make_user(db, ent, Role.engineer)
    operator = make_user(db, ent, Role.operator)
    site = make_site(db, ent)
    area = make_area(db, site)
    line = make_line(db, area)
    ws = make_workstation(db, line)
    eq = make_equipment(db, site, area=area, line=line, workstation=ws,
                        equipment_type_iri="https://ecoplat.dev/kg/MembraneElectrolyzer")
    key, secret = make_api_key(db, admin)
    event = audit.record(db, actor=principal(db, admin), action="create", entity_type="site",
                         entity_id=site.id, after=site)
    return Tree(ecosystem=eco, enterprise=ent, admin=admin, engineer=engineer, operator=operator, site=site,
                area=area, line=line, workstation=ws, equipment=eq, api_key=key, api_key_secret=secret,
                audit_event_id=event.id, headers=headers_for(settings, admin))


# --- the isolation test's builders for the tenancy routes ----------------------------------------

def _register_isolation_builders() -> None:
    from isolation_registry import IsolationTenant, register

    def by_kind(kind: str) -> Any:
        def build(db: Session, tenant: IsolationTenant) -> int:
            return tenant.ids[kind]
        return build

    for prefix, kind in (("/api/ecosystems", "ecosystem"), ("/api/enterprises", "enterprise"),
                         ("/api/sites", "site"), ("/api/areas", "area"), ("/api/lines", "line"),
                         ("/api/workstations", "workstation"), ("/api/equipment", "equipment"),
                         ("/api/users", "user"), ("/api/api-keys", "api_key"),
                         ("/api/audit-events", "audit_event")):
        register(prefix)(by_kind(kind))


_register_isolation_builders()
