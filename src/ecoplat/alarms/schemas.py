"""Pydantic models in and out of the alarm API (never the ORM rows themselves)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, EmailStr, Field, model_validator

from ecoplat.alarms.engine import RuleKind
from ecoplat.alarms.state import AlarmState


class AlarmRuleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=200)
    kind: RuleKind
    key: str = Field(default="", max_length=200, description="The telemetry key watched (not used by expression rules).")
    params: dict[str, Any] = Field(default_factory=dict, description=(
        "high/high_high/low/low_low: {limit}; rate_of_change: {limit, per: second|minute, window_s, "
        "direction: rise|fall|both}; deviation: {limit, setpoint} or {limit, reference_key}; stale: "
        "{seconds}; state_match: {value} or {values}; expression: {expression}. Any: {unit}."))
    priority: int = Field(default=3, ge=1, le=4, description="1 highest … 4 lowest.")
    deadband: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    on_delay_s: float = Field(default=0.0, ge=0, le=86_400, allow_inf_nan=False)
    off_delay_s: float = Field(default=0.0, ge=0, le=86_400, allow_inf_nan=False)
    message_template: str = Field(default="", max_length=500,
                                  description="Placeholders: {device} {key} {value} {limit} {unit} {rule}.")
    device_id: int | None = Field(default=None, ge=1, le=2_147_483_647)
    profile_id: int | None = Field(default=None, ge=1, le=2_147_483_647)
    enabled: bool = True

    @model_validator(mode="after")
    def _one_target(self) -> AlarmRuleIn:
        if (self.device_id is None) == (self.profile_id is None):
            raise ValueError("give exactly one of device_id (one device) or profile_id (all its devices)")
        return self


class AlarmRulePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=200)
    key: str | None = Field(default=None, max_length=200)
    params: dict[str, Any] | None = None
    priority: int | None = Field(default=None, ge=1, le=4)
    deadband: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    on_delay_s: float | None = Field(default=None, ge=0, le=86_400, allow_inf_nan=False)
    off_delay_s: float | None = Field(default=None, ge=0, le=86_400, allow_inf_nan=False)
    message_template: str | None = Field(default=None, max_length=500)
    enabled: bool | None = None


class AlarmRuleOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    enterprise_id: int
    name: str
    kind: str
    key: str
    params: dict[str, Any]
    priority: int
    deadband: float
    on_delay_s: float
    off_delay_s: float
    message_template: str
    device_id: int | None
    profile_id: int | None
    enabled: bool
    created_at: datetime
    updated_at: datetime


class AlarmOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    enterprise_id: int
    rule_id: int | None
    device_id: int
    site_id: int | None
    key: str
    kind: str
    state: AlarmState
    active: bool
    acked: bool
    priority: int
    message: str
    value: Any = None
    limit: float | None
    count: int
    first_triggered_at: datetime
    last_triggered_at: datetime
    cleared_at: datetime | None
    acked_at: datetime | None
    acked_by: int | None
    shelved_until: datetime | None
    shelved_by: int | None
    shelve_reason: str
    closed_at: datetime | None


class TransitionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    alarm_id: int
    action: str
    from_state: AlarmState
    to_state: AlarmState
    at: datetime
    user_id: int | None
    note: str
    value: Any = None


class CommentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=4000)


class CommentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    alarm_id: int
    user_id: int | None
    text: str
    at: datetime


class AckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str = Field(default="", max_length=1000)


class ShelveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    minutes: float | None = Field(default=None, gt=0, le=60 * 24 * 30, allow_inf_nan=False)
    until: datetime | None = None
    reason: str = Field(min_length=1, max_length=500, description="Why the alarm is shelved (kept in its history).")

    @model_validator(mode="after")
    def _one_expiry(self) -> ShelveIn:
        if (self.minutes is None) == (self.until is None):
            raise ValueError("give exactly one of minutes or until: shelving always has an expiry")
        return self


class NoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str = Field(default="", max_length=1000)


class WebhookConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: AnyHttpUrl
    secret: str = Field(min_length=8, max_length=200, description="Key of the X-Ecoplat-Signature HMAC-SHA256.")
    timeout_s: float = Field(default=5.0, gt=0, le=30)


class EmailConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: list[EmailStr] = Field(min_length=1, max_length=50)
    smtp_host: str = Field(min_length=1, max_length=200)
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_user: str = Field(default="", max_length=200)
    smtp_password: str = Field(default="", max_length=200)
    smtp_starttls: bool = False
    smtp_ssl: bool = False
    from_address: EmailStr


class ChannelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    kind: Literal["webhook", "email", "in_app"]
    config: dict[str, Any] = Field(default_factory=dict)
    max_priority: int = Field(default=4, ge=1, le=4, description="Notify alarms of priority 1 … max_priority.")
    actions: list[Literal["alarm", "return_to_normal", "acknowledge", "shelve", "unshelve", "suppress",
                          "unsuppress", "remove_from_service", "return_to_service"]] = Field(
        default_factory=lambda: ["alarm", "return_to_normal"])
    enabled: bool = True

    @model_validator(mode="after")
    def _config_fits_kind(self) -> ChannelIn:
        if self.kind == "webhook":
            self.config = WebhookConfig.model_validate(self.config).model_dump(mode="json")
        elif self.kind == "email":
            self.config = EmailConfig.model_validate(self.config).model_dump(mode="json")
        elif self.config:
            raise ValueError("an in_app channel takes no config")
        return self


class ChannelPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    config: dict[str, Any] | None = None
    max_priority: int | None = Field(default=None, ge=1, le=4)
    actions: list[str] | None = None
    enabled: bool | None = None


SECRET_CONFIG_KEYS = ("secret", "smtp_password")


class ChannelOut(BaseModel):
    id: int
    enterprise_id: int
    name: str
    kind: str
    config: dict[str, Any] = Field(description="Secrets are shown as '***'.")
    max_priority: int
    actions: list[str]
    enabled: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: Any) -> ChannelOut:
        config = {k: ("***" if k in SECRET_CONFIG_KEYS and v else v) for k, v in (row.config or {}).items()}
        return cls(id=row.id, enterprise_id=row.enterprise_id, name=row.name, kind=row.kind, config=config,
                   max_priority=row.max_priority, actions=list(row.actions or []), enabled=row.enabled,
                   created_at=row.created_at, updated_at=row.updated_at)


class InAppNotificationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    alarm_id: int | None
    priority: int
    title: str
    body: str
    created_at: datetime
    read_at: datetime | None


class OutboxOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    channel_id: int
    alarm_id: int | None
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str
    sent_at: datetime | None


class KpiOut(BaseModel):
    start: datetime
    end: datetime
    operators: int
    annunciations: int
    alarms_per_operator_per_10min: float
    peak_alarms_per_10min: int
    rate_series: list[dict[str, Any]]
    floods: list[dict[str, Any]]
    flood_time_pct: float
    chattering: list[dict[str, Any]]
    stale: list[dict[str, Any]]
    top10: list[dict[str, Any]]
    top10_share_pct: float
    priority_distribution: dict[str, int]
    priority_distribution_pct: dict[str, float]
