"""Pydantic models in and out of the connect API (never the ORM classes in an answer)."""

from __future__ import annotations

import enum
import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from ecoplat.connect.models import AttributeScope, ChartKind, TelemetryDataType

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Key = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
DbId = Annotated[int, Field(ge=1, le=2_147_483_647)]

# UCUM case-sensitive codes: printable ASCII without spaces (e.g. "Cel", "kPa", "m3/h", "[ppm]", "%").
_UCUM = re.compile(r"^[!-~]{0,40}$")


def _ucum(value: str) -> str:
    if not _UCUM.match(value):
        raise ValueError(f"'{value}' is not a UCUM code (printable ASCII, no spaces, e.g. Cel, kPa, m3/h, [ppm])")
    return value


class TelemetryKeyDef(BaseModel):
    key: Key
    data_type: TelemetryDataType = TelemetryDataType.number
    unit: Annotated[str, AfterValidator(_ucum)] = Field(default="", description="UCUM code, e.g. Cel, kPa, A/m2")
    min: float | None = Field(default=None, description="Lower end of the expected range.")
    max: float | None = Field(default=None, description="Upper end of the expected range.")
    chart: ChartKind = ChartKind.line
    description: str = Field(default="", max_length=1000)

    @model_validator(mode="after")
    def _range(self) -> TelemetryKeyDef:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"{self.key}: min {self.min} is above max {self.max}")
        return self


def _unique_keys(value: list[TelemetryKeyDef]) -> list[TelemetryKeyDef]:
    seen: set[str] = set()
    for k in value:
        if k.key in seen:
            raise ValueError(f"telemetry key '{k.key}' is defined twice")
        seen.add(k.key)
    return value


KeyDefs = Annotated[list[TelemetryKeyDef], AfterValidator(_unique_keys), Field(max_length=500)]
Timeout = Annotated[int, Field(ge=10, le=30 * 24 * 3600, description="Seconds without data before the device counts as offline.")]


class ProfileIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    description: str = Field(default="", max_length=4000)
    telemetry_keys: KeyDefs = Field(default_factory=list)
    inactivity_timeout_s: Timeout = 600
    default_rules: list[dict[str, Any]] = Field(default_factory=list, max_length=200,
                                                description="Alarm rule templates for devices of this profile.")
    source_iri: str = Field(default="", max_length=500)


class ProfileUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    description: str | None = Field(default=None, max_length=4000)
    telemetry_keys: KeyDefs | None = None
    inactivity_timeout_s: Timeout | None = None
    default_rules: list[dict[str, Any]] | None = Field(default=None, max_length=200)
    source_iri: str | None = Field(default=None, max_length=500)


class ProfileOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    enterprise_id: int
    name: str
    description: str
    telemetry_keys: list[TelemetryKeyDef]
    inactivity_timeout_s: int
    default_rules: list[dict[str, Any]]
    source_iri: str
    created_at: datetime
    updated_at: datetime


class DeviceStatus(enum.StrEnum):
    online = "online"
    offline = "offline"


class DeviceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    type: Annotated[str, StringConstraints(strip_whitespace=True, max_length=100)] = "default"
    label: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] = ""
    profile_id: DbId | None = None
    equipment_id: DbId | None = None
    is_gateway: bool = False
    gateway_id: DbId | None = Field(default=None, description="The gateway this device talks through.")


class DeviceUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    type: Annotated[str, StringConstraints(strip_whitespace=True, max_length=100)] | None = None
    label: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] | None = None
    profile_id: DbId | None = None
    equipment_id: DbId | None = None
    is_gateway: bool | None = None
    gateway_id: DbId | None = None


class DeviceOut(BaseModel):
    id: int
    enterprise_id: int | None
    name: str
    type: str
    label: str
    profile_id: int | None
    equipment_id: int | None
    is_gateway: bool
    gateway_id: int | None
    token_prefix: str
    token_revoked: bool
    status: DeviceStatus
    last_seen_at: datetime | None
    last_activity: str
    messages_total: int
    points_total: int
    errors_total: int
    claimed_at: datetime | None
    created_at: datetime
    updated_at: datetime


class DeviceWithToken(DeviceOut):
    access_token: str | None = Field(description="The device's access token; shown only this once.")


class CredentialsOut(BaseModel):
    device_id: int
    credentials_type: str = "ACCESS_TOKEN"
    token_prefix: str
    revoked: bool


class TokenOut(BaseModel):
    device_id: int
    access_token: str = Field(description="Shown only this once; the previous token stopped working.")
    token_prefix: str


class AttributeOut(BaseModel):
    scope: AttributeScope
    key: str
    value: Any
    updated_at: datetime


class RpcIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    params: Any = Field(default_factory=dict)
    timeout_ms: int = Field(default=5_000, ge=100, le=60_000)
    oneway: bool = Field(default=False, description="Send and do not wait for an answer.")


class RpcOut(BaseModel):
    id: int | None = None
    response: Any = None
    delivered: bool = True


class RejectOut(BaseModel):
    reason: str
    count: int
    last_detail: str
    last_at: datetime


class RecentErrorOut(BaseModel):
    reason: str
    detail: str
    at: datetime


class DeviceErrorsOut(BaseModel):
    device_id: int
    errors_total: int
    by_reason: list[RejectOut]
    recent: list[RecentErrorOut]


class ProvisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    type: Annotated[str, StringConstraints(strip_whitespace=True, max_length=100)] = "default"
    label: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] = ""
    is_gateway: bool = False
    claim_valid_hours: int = Field(default=24 * 30, ge=1, le=24 * 365)


class ProvisionOut(BaseModel):
    device: DeviceOut
    claim_code: str = Field(description="Give it to the enterprise that will claim the device; shown only this once.")
    claim_expires_at: datetime


class ClaimIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    claim_code: Annotated[str, StringConstraints(strip_whitespace=True, min_length=4, max_length=64)]
