"""Pydantic models in and out of the tenancy API (never the ORM classes in an answer)."""

from __future__ import annotations

import re
import zoneinfo
from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any

import pycountry
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    field_validator,
)

from ecoplat.api_common import no_nul
from ecoplat.tenancy.models import MembershipRole, Role, SizeClass

LOCALES = ("en", "zh_CN")


@lru_cache(maxsize=1)
def _country_codes() -> frozenset[str]:
    return frozenset(c.alpha_2 for c in pycountry.countries)


def _country(value: str) -> str:
    code = value.strip().upper()
    if code not in _country_codes():
        raise ValueError(f"'{value}' is not an ISO 3166-1 alpha-2 country code (e.g. CN, DE, US)")
    return code


@lru_cache(maxsize=1)
def _timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _timezone(value: str) -> str:
    if value not in _timezones():
        raise ValueError(f"'{value}' is not an IANA time zone (e.g. Asia/Shanghai, Europe/Berlin, UTC)")
    return value


def _locale(value: str) -> str:
    normalized = value.replace("-", "_")
    for loc in LOCALES:
        if normalized.lower() == loc.lower():
            return loc
    raise ValueError(f"'{value}' is not a supported locale; use one of {', '.join(LOCALES)}")


def _iri(value: str) -> str:
    # Free for now (the knowledge graph will type equipment later), but it must look like an IRI.
    if value and not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$", value):
        raise ValueError("must be an absolute IRI such as https://ecoplat.dev/kg/MembraneElectrolyzer")
    return value


def _roles(value: list[Role]) -> list[Role]:
    seen: list[Role] = []
    for r in value:
        if r not in seen:
            seen.append(r)
    return seen


Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Code = Annotated[str, StringConstraints(strip_whitespace=True, max_length=64)]
Country = Annotated[str, StringConstraints(min_length=2, max_length=2), AfterValidator(_country)]
IsicClass = Annotated[str, StringConstraints(pattern=r"^[0-9]{4}$"),
                      Field(description="ISIC Rev.4 class: 4 digits, e.g. 2011 (basic chemicals)")]
TimeZone = Annotated[str, StringConstraints(max_length=64), AfterValidator(_timezone)]
Locale = Annotated[str, StringConstraints(max_length=10), AfterValidator(_locale)]
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{1,63}$"),
                 Field(description="Lower-case letters, digits and dashes, e.g. chlor-alkali")]
Iri = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500), AfterValidator(_iri)]
Password = Annotated[str, StringConstraints(min_length=8, max_length=256)]
Roles = Annotated[list[Role], Field(min_length=1, max_length=len(Role)), AfterValidator(_roles)]
Id = Annotated[int, Field(ge=1, le=2_147_483_647)]
Latitude = Annotated[float, Field(ge=-90, le=90)]
Longitude = Annotated[float, Field(ge=-180, le=180)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        return no_nul(value)


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --- auth -----------------------------------------------------------------------------------

class TokenOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str = "bearer"
    expires_in: int = Field(description="Seconds until the access token expires.")


class RefreshIn(_In):
    refresh_token: Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class MeOut(BaseModel):
    user_id: int | None
    email: str
    full_name: str
    enterprise_id: int
    enterprise_name: str
    roles: list[str]
    permissions: list[str]
    locale: str
    stewarded_ecosystem_ids: list[int]
    api_key_id: int | None = None


class MePatch(_In):
    full_name: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] | None = None
    locale: Locale | None = None
    current_password: Annotated[str, StringConstraints(max_length=256)] | None = None
    new_password: Password | None = None


# --- ecosystems -----------------------------------------------------------------------------

class EcosystemCreate(_In):
    slug: Slug
    name_en: Name
    name_zh: Name
    industry: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
    description: Annotated[str, StringConstraints(max_length=10_000)] = ""


class EcosystemUpdate(_In):
    slug: Slug | None = None
    name_en: Name | None = None
    name_zh: Name | None = None
    industry: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)] | None = None
    description: Annotated[str, StringConstraints(max_length=10_000)] | None = None


class EcosystemOut(_Out):
    id: int
    slug: str
    name_en: str
    name_zh: str
    industry: str
    description: str
    member_count: int = 0
    created_at: datetime
    updated_at: datetime


# --- enterprises ----------------------------------------------------------------------------

class MembershipOut(_Out):
    ecosystem_id: int
    role: MembershipRole


class MembershipIn(_In):
    role: MembershipRole = MembershipRole.member


class EcosystemMemberOut(_Out):
    ecosystem_id: int
    enterprise_id: int
    role: MembershipRole


class EnterpriseCreate(_In):
    name: Name
    country: Country
    isic_class: IsicClass
    size_class: SizeClass
    timezone: TimeZone = "UTC"
    ecosystem_id: Id | None = Field(
        default=None, description="Ecosystem to join; a steward's own ecosystem by default.")
    membership_role: MembershipRole = MembershipRole.member


RateLimit = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,9}:[0-9]{1,9}(,[0-9]{1,9}:[0-9]{1,9})*$", max_length=200),
                      Field(description="count:seconds pairs, e.g. 200:1,6000:60")]


class RateLimits(_In):
    messages: RateLimit | None = None
    telemetryMessages: RateLimit | None = None  # noqa: N815 - ThingsBoard's own names
    telemetryDataPoints: RateLimit | None = None  # noqa: N815


class TenantLimits(_In):
    """The tenant's limits, answered to ThingsBoard gateways as getSessionLimits."""

    maxPayloadSize: Annotated[int, Field(ge=1, le=16_777_216)] | None = None  # noqa: N815
    maxInflightMessages: Annotated[int, Field(ge=1, le=100_000)] | None = None  # noqa: N815
    rateLimits: RateLimits | None = None  # noqa: N815


class EnterpriseUpdate(_In):
    limits: TenantLimits | None = Field(default=None, description="Platform admins only.")
    name: Name | None = None
    country: Country | None = None
    isic_class: IsicClass | None = None
    size_class: SizeClass | None = None
    timezone: TimeZone | None = None


class EnterpriseOut(BaseModel):
    """Public fields for everyone who may see the enterprise; private ones only for its own
    people and platform admins (null for an ecosystem steward looking at a member)."""

    id: int
    name: str
    country: str
    isic_class: str
    size_class: SizeClass
    memberships: list[MembershipOut] = []
    timezone: str | None = None
    limits: dict[str, Any] | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


# --- plant: sites, areas, lines, workstations, equipment ----------------------------------------

class SiteCreate(_In):
    name: Name
    code: Code = ""
    timezone: TimeZone = "UTC"
    address: Annotated[str, StringConstraints(max_length=400)] = ""
    latitude: Latitude | None = None
    longitude: Longitude | None = None
    enterprise_id: Id | None = Field(default=None, description="Platform admins only; default: your enterprise.")


class SiteUpdate(_In):
    name: Name | None = None
    code: Code | None = None
    timezone: TimeZone | None = None
    address: Annotated[str, StringConstraints(max_length=400)] | None = None
    latitude: Latitude | None = None
    longitude: Longitude | None = None


class SiteOut(_Out):
    id: int
    enterprise_id: int
    name: str
    code: str
    timezone: str
    address: str
    latitude: float | None
    longitude: float | None
    created_at: datetime
    updated_at: datetime


class AreaCreate(_In):
    site_id: Id
    name: Name
    code: Code = ""


class AreaUpdate(_In):
    name: Name | None = None
    code: Code | None = None


class AreaOut(_Out):
    id: int
    enterprise_id: int
    site_id: int
    name: str
    code: str
    created_at: datetime
    updated_at: datetime


class LineCreate(_In):
    area_id: Id
    name: Name
    code: Code = ""


class LineUpdate(_In):
    name: Name | None = None
    code: Code | None = None


class LineOut(_Out):
    id: int
    enterprise_id: int
    area_id: int
    name: str
    code: str
    created_at: datetime
    updated_at: datetime


class WorkstationCreate(_In):
    line_id: Id
    name: Name
    code: Code = ""
    position: Annotated[int, Field(ge=0, le=100_000)] = 0


class WorkstationUpdate(_In):
    name: Name | None = None
    code: Code | None = None
    position: Annotated[int, Field(ge=0, le=100_000)] | None = None


class WorkstationOut(_Out):
    id: int
    enterprise_id: int
    line_id: int
    name: str
    code: str
    position: int
    created_at: datetime
    updated_at: datetime


_Text200 = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)]


class EquipmentCreate(_In):
    site_id: Id
    area_id: Id | None = None
    line_id: Id | None = None
    workstation_id: Id | None = None
    name: Name
    tag: Code = ""
    equipment_type_iri: Iri = ""
    manufacturer: _Text200 = ""
    model: _Text200 = ""
    serial_number: _Text200 = ""


class EquipmentUpdate(_In):
    area_id: Id | None = None
    line_id: Id | None = None
    workstation_id: Id | None = None
    name: Name | None = None
    tag: Code | None = None
    equipment_type_iri: Iri | None = None
    manufacturer: _Text200 | None = None
    model: _Text200 | None = None
    serial_number: _Text200 | None = None


class EquipmentOut(_Out):
    id: int
    enterprise_id: int
    site_id: int
    area_id: int | None
    line_id: int | None
    workstation_id: int | None
    name: str
    tag: str
    equipment_type_iri: str
    manufacturer: str
    model: str
    serial_number: str
    created_at: datetime
    updated_at: datetime


# --- users and API keys -------------------------------------------------------------------------

class UserCreate(_In):
    email: EmailStr = Field(max_length=320)
    full_name: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] = ""
    password: Password
    roles: Roles
    locale: Locale = "en"
    enterprise_id: Id | None = Field(default=None, description="Platform admins only; default: your enterprise.")


class UserUpdate(_In):
    email: EmailStr | None = Field(default=None, max_length=320)
    full_name: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] | None = None
    password: Password | None = None
    roles: Roles | None = None
    locale: Locale | None = None
    is_active: bool | None = None


class UserOut(_Out):
    id: int
    enterprise_id: int
    email: str
    full_name: str
    roles: list[str]
    locale: str
    is_active: bool
    last_login_at: datetime | None
    created_at: datetime
    updated_at: datetime


class ApiKeyCreate(_In):
    name: Name
    roles: Annotated[list[Role], Field(max_length=len(Role)), AfterValidator(_roles)] = Field(
        default_factory=list, description="A subset of your roles; empty = all of them.")
    expires_at: datetime | None = Field(default=None, description="When the key stops working; null = never.")


class ApiKeyUpdate(_In):
    name: Name | None = None
    expires_at: datetime | None = None


class ApiKeyOut(_Out):
    id: int
    enterprise_id: int
    user_id: int
    name: str
    prefix: str
    roles: list[str]
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime


class ApiKeyCreated(ApiKeyOut):
    secret: str = Field(description="The key itself; shown only this once. Send it as 'Authorization: Bearer <secret>'.")


# --- audit --------------------------------------------------------------------------------------

class AuditEventOut(_Out):
    id: int
    enterprise_id: int | None
    actor_user_id: int | None
    actor: str
    action: str
    entity_type: str
    entity_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    at: datetime
    ip: str


# --- health -------------------------------------------------------------------------------------

class HealthOut(BaseModel):
    status: str
    database: str
    migrations: str
    version: str
