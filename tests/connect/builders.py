"""Builders for connect tests: enterprises with users of a given role, and their request headers."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy.orm import Session

from ecoplat.tenancy.auth import Principal, hash_password, issue_tokens, principal_for_user
from ecoplat.tenancy.models import (
    Ecosystem,
    EcosystemMembership,
    Enterprise,
    Equipment,
    MembershipRole,
    Role,
    Site,
    SizeClass,
    User,
)

SECRET = "test-secret-" + "x" * 32  # the `settings` fixture's secret_key


@lru_cache(maxsize=1)
def _password_hash() -> str:
    return hash_password("correct horse battery staple")  # argon2 once per run, not per user


@dataclass
class Actor:
    enterprise_id: int
    user_id: int
    principal: Principal
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def make_enterprise(db: Session, *, name: str = "Bohai Chlor-Alkali", size: SizeClass = SizeClass.small) -> Enterprise:
    ent = Enterprise(name=f"{name} {secrets.token_hex(3)}", country="CN", isic_class="2011", size_class=size)
    db.add(ent)
    db.flush()
    return ent


def make_actor(db: Session, *, enterprise_id: int | None = None, role: Role = Role.enterprise_admin,
               locale: str = "en") -> Actor:
    if enterprise_id is None:
        enterprise_id = make_enterprise(db).id
    user = User(enterprise_id=enterprise_id, email=f"{role.value}-{secrets.token_hex(5)}@example.com",
                password_hash=_password_hash(), roles=[role.value], locale=locale)
    db.add(user)
    db.flush()
    token = issue_tokens(user, secret=SECRET, access_minutes=60, refresh_days=1)["access_token"]
    return Actor(enterprise_id, user.id, principal_for_user(db, user), token)


def make_steward(db: Session) -> Actor:
    """An ecosystem steward of a large enterprise that co-builds an ecosystem."""
    ent = make_enterprise(db, name="Sinochem Steward", size=SizeClass.large)
    eco = Ecosystem(slug=f"chlor-alkali-{secrets.token_hex(3)}", name_en="Chlor-alkali", name_zh="氯碱",
                    industry="chemicals")
    db.add(eco)
    db.flush()
    db.add(EcosystemMembership(ecosystem_id=eco.id, enterprise_id=ent.id, role=MembershipRole.co_builder))
    db.flush()
    return make_actor(db, enterprise_id=ent.id, role=Role.ecosystem_steward)


def make_equipment(db: Session, enterprise_id: int, *, name: str = "Electrolyzer E-101") -> Equipment:
    site = Site(enterprise_id=enterprise_id, name="Main site")
    db.add(site)
    db.flush()
    eq = Equipment(enterprise_id=enterprise_id, site_id=site.id, name=name, tag="E-101")
    db.add(eq)
    db.flush()
    return eq


# Gateways (engineer "gateways"): the isolation test's builder for /api/connectors.
def _register_gateway_builders() -> None:
    from tests.connect.gateway_builders import register_isolation_builders

    register_isolation_builders()


_register_gateway_builders()


# --- the isolation test's builders for the connect routes ----------------------------------------

def _register_isolation_builders() -> None:
    try:
        from isolation_registry import IsolationTenant, exempt, register
    except ImportError:  # imported as tests.connect.builders outside the isolation test
        return
    from ecoplat.connect.ingest import hash_token
    from ecoplat.connect.models import Device, DeviceProfile

    def device(db: Session, tenant: IsolationTenant) -> int:
        if "device" not in tenant.cache:
            token = secrets.token_urlsafe(15)
            d = Device(enterprise_id=tenant.enterprise_id, name=f"isolation device {secrets.token_hex(3)}",
                       token_hash=hash_token(token), token_prefix=token[:6],
                       equipment_id=tenant.ids.get("equipment"))
            db.add(d)
            db.flush()
            tenant.cache["device"] = d.id
        return tenant.cache["device"]

    def profile(db: Session, tenant: IsolationTenant) -> int:
        p = DeviceProfile(enterprise_id=tenant.enterprise_id, name=f"isolation profile {secrets.token_hex(3)}",
                          telemetry_keys=[{"key": "temperature", "unit": "Cel"}])
        db.add(p)
        db.flush()
        return p.id

    register("/api/devices", bodies={
        "POST /api/devices/{device_id}/rpc": {"method": "getState", "params": {}, "oneway": True},
        "POST /api/devices/{device_id}/attributes": {"alarm_ppm": 1.0},
        "PATCH /api/devices/{device_id}": {"label": "taken over"},
    })(device)
    register("/api/device-profiles", bodies={
        "PATCH /api/device-profiles/{profile_id}": {"description": "taken over"},
    })(profile)
    exempt("/api/v1", "the ThingsBoard device API is authenticated by the device token in the path, "
                      "not by a user of a tenant; tests/connect/test_http_ingest.py covers unknown tokens")


_register_isolation_builders()
