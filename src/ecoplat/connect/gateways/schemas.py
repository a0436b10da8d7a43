"""Pydantic models in and out of the connectors API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
DbId = Annotated[int, Field(ge=1, le=2_147_483_647)]


class ConnectorIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    device_id: DbId = Field(description="The device whose telemetry this connector delivers.")
    type: str = Field(min_length=1, max_length=64, description="Connector type: opcua or modbus.")
    config: dict[str, Any] = Field(description="The type's configuration (see GET /api/connectors/types).")
    enabled: bool = True


class ConnectorUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    device_id: DbId | None = None
    config: dict[str, Any] | None = Field(
        default=None, description="The whole new configuration; a password of '********' keeps the stored one.")
    enabled: bool | None = None


class LiveStatus(BaseModel):
    state: str
    last_error: str | None = None
    last_error_at: datetime | None = None
    last_success_at: datetime | None = None
    connected_at: datetime | None = None
    points_total: int = 0
    rejects_total: int = 0
    failures_in_a_row: int = 0
    retry_in_s: float | None = None
    running: bool = Field(description="Whether this platform process runs the connector right now.")


class ConnectorOut(BaseModel):
    id: int
    enterprise_id: int
    device_id: int
    name: str
    type: str
    config: dict[str, Any] = Field(description="Passwords are shown as '********'.")
    enabled: bool
    status: str
    last_error: str | None
    last_error_at: datetime | None
    last_success_at: datetime | None
    created_at: datetime
    updated_at: datetime


class ConnectorTypeOut(BaseModel):
    type: str
    title: str
    config_schema: dict[str, Any]


class BrowseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint: str = Field(max_length=500, description="opc.tcp://host:port/path")
    node_id: str | None = Field(default=None, max_length=500, description="Node to list children of; default the Objects folder.")
    username: str | None = Field(default=None, max_length=200)
    password: str | None = Field(default=None, max_length=200)
    timeout_s: float = Field(default=5.0, gt=0, le=15)


class BrowseNodeOut(BaseModel):
    node_id: str
    browse_name: str
    display_name: str
    node_class: str
    data_type: str | None
    value: Any = None


class BrowseOut(BaseModel):
    endpoint: str
    node_id: str
    children: list[BrowseNodeOut]


class ReadRow(BaseModel):
    key: str
    raw: list[int | bool] | None
    value: Any = None
    error: str | None = None


class ReadOut(BaseModel):
    rows: list[ReadRow]
