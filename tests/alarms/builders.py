"""Builders for the alarm tests: enterprises, users of a role (with a bearer token), device
profiles, devices with access tokens, rules and alarms, written straight through the ORM."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from sqlalchemy.orm import Session

from ecoplat.alarms.models import AlarmRule
from ecoplat.connect.ingest import hash_token
from ecoplat.connect.models import Device, DeviceProfile
from ecoplat.tenancy.auth import Principal, hash_password, issue_tokens, principal_for_user
from ecoplat.tenancy.models import Enterprise, Equipment, Role, Site, SizeClass, User

SECRET = "test-secret-" + "x" * 32  # the root `settings` fixture's secret_key


@lru_cache(maxsize=1)
def _password_hash() -> str:
    return hash_password("correct horse battery staple")


@dataclass
class Person:
    user_id: int
    enterprise_id: int
    principal: Principal
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Plant:
    """One enterprise with a site, a device profile, devices and people of several roles."""

    enterprise_id: int
    site_id: int
    profile_id: int
    devices: dict[str, tuple[int, str]] = field(default_factory=dict)  # name → (id, token)
    people: dict[str, Person] = field(default_factory=dict)  # role → person

    def device_id(self, name: str) -> int:
        return self.devices[name][0]


def make_person(db: Session, enterprise_id: int, role: Role | str, *, secret: str = SECRET) -> Person:
    user = User(enterprise_id=enterprise_id, email=f"{Role(role).value}-{secrets.token_hex(5)}@example.com",
                password_hash=_password_hash(), roles=[Role(role).value])
    db.add(user)
    db.flush()
    token = issue_tokens(user, secret=secret, access_minutes=120, refresh_days=1)["access_token"]
    return Person(user.id, enterprise_id, principal_for_user(db, user), token)


def make_device(db: Session, enterprise_id: int, name: str, *, profile_id: int | None = None,
                equipment_id: int | None = None) -> tuple[int, str]:
    token = secrets.token_urlsafe(16)
    dev = Device(enterprise_id=enterprise_id, name=name, token_hash=hash_token(token), token_prefix=token[:6],
                 profile_id=profile_id, equipment_id=equipment_id)
    db.add(dev)
    db.flush()
    return dev.id, token


def make_plant(db: Session, *, devices: tuple[str, ...] = ("E-101",), roles: tuple[Role, ...] = (
        Role.enterprise_admin, Role.engineer, Role.operator, Role.safety_officer, Role.customer),
        secret: str = SECRET) -> Plant:
    ent = Enterprise(name=f"Bohai Chlor-Alkali {secrets.token_hex(3)}", country="CN", isic_class="2011",
                     size_class=SizeClass.small)
    db.add(ent)
    db.flush()
    site = Site(enterprise_id=ent.id, name="Electrolysis plant", timezone="Asia/Shanghai")
    db.add(site)
    db.flush()
    equipment = Equipment(enterprise_id=ent.id, site_id=site.id, name="Membrane electrolyzer", tag="E-101")
    profile = DeviceProfile(enterprise_id=ent.id, name=f"Electrolyzer {secrets.token_hex(2)}")
    db.add_all([equipment, profile])
    db.flush()
    plant = Plant(ent.id, site.id, profile.id)
    for name in devices:
        plant.devices[name] = make_device(db, ent.id, name, profile_id=profile.id, equipment_id=equipment.id)
    for role in roles:
        plant.people[Role(role).value] = make_person(db, ent.id, role, secret=secret)
    return plant


def make_rule(db: Session, enterprise_id: int, **kw: Any) -> AlarmRule:
    values: dict[str, Any] = {"name": "", "kind": "high", "key": "temp_c", "params": {"limit": 80.0},
                              "priority": 2, "deadband": 0.0, "on_delay_s": 0.0, "off_delay_s": 0.0,
                              "message_template": "", "enabled": True} | kw
    rule = AlarmRule(enterprise_id=enterprise_id, **values)
    db.add(rule)
    db.flush()
    return rule


# --- the isolation test's builders for the alarm routes --------------------------------------


def _register_isolation_builders() -> None:
    try:
        from isolation_registry import IsolationTenant, register
    except ImportError:  # imported outside the isolation test
        return
    from ecoplat.alarms import service
    from ecoplat.alarms.engine import ConditionChange
    from ecoplat.alarms.models import NotificationChannel

    def device(db: Session, tenant: IsolationTenant) -> int:
        if "alarm_device" not in tenant.cache:
            tenant.cache["alarm_device"] = make_device(db, tenant.enterprise_id, f"iso {secrets.token_hex(3)}",
                                                       equipment_id=tenant.ids.get("equipment"))[0]
        return tenant.cache["alarm_device"]

    def rule(db: Session, tenant: IsolationTenant) -> int:
        return make_rule(db, tenant.enterprise_id, device_id=device(db, tenant)).id

    def alarm(db: Session, tenant: IsolationTenant) -> int:
        rule_id = rule(db, tenant)
        change = ConditionChange(rule_id=rule_id, device_id=device(db, tenant), enterprise_id=tenant.enterprise_id,
                                 active=True, at=1_900_000_000_000, value=99.0, limit=80.0, priority=2,
                                 message="isolation alarm", key="temp_c", kind="high")
        return service.apply_condition_changes(db, [change])[0].id

    def channel(db: Session, tenant: IsolationTenant) -> int:
        ch = NotificationChannel(enterprise_id=tenant.enterprise_id, name="iso", kind="in_app", config={},
                                 max_priority=4, actions=["alarm"])
        db.add(ch)
        db.flush()
        return ch.id

    def profile(db: Session, tenant: IsolationTenant) -> int:
        p = DeviceProfile(enterprise_id=tenant.enterprise_id, name=f"iso alarms {secrets.token_hex(3)}",
                          default_rules=[{"name": "T high", "kind": "high", "key": "t", "params": {"limit": 1}}])
        db.add(p)
        db.flush()
        return p.id

    register("/api/alarm-rules", bodies={"PATCH /api/alarm-rules/{rule_id}": {"priority": 1}})(rule)
    register("/api/alarm-rules/from-profile")(profile)
    register("/api/alarms", bodies={
        "POST /api/alarms/{alarm_id}/shelve": {"minutes": 5, "reason": "taken over"},
        "POST /api/alarms/{alarm_id}/comment": {"text": "taken over"},
    })(alarm)
    register("/api/notification-channels", bodies={
        "PATCH /api/notification-channels/{channel_id}": {"name": "taken over"}})(channel)


_register_isolation_builders()
