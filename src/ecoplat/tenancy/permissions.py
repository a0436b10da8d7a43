"""Roles and their written permission sets. A permission is '<domain>:<verb>'."""

from __future__ import annotations

from ecoplat.tenancy.models import Role

# What each permission lets a user do, so the set below can be read and reviewed.
PERMISSIONS: dict[str, str] = {
    "platform:admin": "everything, in every enterprise and ecosystem",
    "ecosystem:read": "see ecosystems and their member list",
    "ecosystem:write": "create and edit ecosystems and memberships",
    "ecosystem:members": "see member enterprises of the ecosystems one stewards (not their private data)",
    "enterprise:read": "see one's own enterprise",
    "enterprise:write": "edit one's own enterprise",
    "plant:read": "see sites, areas, lines, workstations and equipment",
    "plant:write": "create and edit sites, areas, lines, workstations and equipment",
    "users:read": "see the enterprise's users",
    "users:write": "invite, edit and deactivate the enterprise's users",
    "apikeys:write": "create and revoke API keys",
    "audit:read": "read the enterprise's audit log",
    "devices:read": "see devices, telemetry and their errors",
    "devices:write": "create, claim and configure devices, gateways and profiles",
    "devices:provision": "pre-create devices with claim codes for others to claim",
    "alarms:read": "see alarms and alarm KPIs",
    "alarms:ack": "acknowledge and comment on alarms",
    "alarms:shelve": "shelve and unshelve alarms, take them out of service",
    "alarms:configure": "create and edit alarm rules",
    "orders:read": "see one's own orders",
    "orders:write": "place and change one's own orders",
}

_READ_PLANT = {"ecosystem:read", "enterprise:read", "plant:read", "devices:read", "alarms:read"}

ROLE_PERMISSIONS: dict[Role, frozenset[str]] = {
    Role.platform_admin: frozenset(PERMISSIONS),
    Role.ecosystem_steward: frozenset(
        {"ecosystem:read", "ecosystem:write", "ecosystem:members", "enterprise:read",
         "devices:provision", "devices:read"}),
    Role.enterprise_admin: frozenset(
        _READ_PLANT | {"enterprise:write", "plant:write", "users:read", "users:write", "apikeys:write",
                       "audit:read", "devices:write", "alarms:ack", "alarms:shelve", "alarms:configure"}),
    Role.engineer: frozenset(
        _READ_PLANT | {"plant:write", "devices:write", "alarms:ack", "alarms:configure", "apikeys:write",
                       "users:read"}),
    Role.safety_officer: frozenset(_READ_PLANT | {"alarms:ack", "alarms:shelve", "alarms:configure", "users:read"}),
    Role.operator: frozenset(_READ_PLANT | {"alarms:ack"}),
    Role.customer: frozenset({"ecosystem:read", "enterprise:read", "orders:read", "orders:write"}),
}


def permissions_for(roles: list[str] | tuple[str, ...] | set[str]) -> frozenset[str]:
    out: set[str] = set()
    for r in roles:
        try:
            out |= ROLE_PERMISSIONS[Role(r)]
        except ValueError:
            continue
    return frozenset(out)
