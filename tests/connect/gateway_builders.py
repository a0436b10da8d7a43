"""Builders for the gateway tests: devices and connector configurations written through the ORM,
and the isolation test's builder for /api/connectors."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy.orm import Session

from ecoplat.connect.gateways.models import ConnectorConfig
from ecoplat.connect.models import Device

MODBUS_CONFIG: dict[str, Any] = {
    "host": "127.0.0.1", "port": 1502, "registers": [{"key": "level_pct", "address": 0}]}


def make_device(db: Session, enterprise_id: int, *, name: str | None = None) -> Device:
    device = Device(enterprise_id=enterprise_id, name=name or f"PLC {secrets.token_hex(3)}")
    db.add(device)
    db.flush()
    return device


def make_connector(db: Session, enterprise_id: int, *, device_id: int | None = None, type: str = "modbus",
                   config: dict[str, Any] | None = None, enabled: bool = False, name: str | None = None
                   ) -> ConnectorConfig:
    if device_id is None:
        device_id = make_device(db, enterprise_id).id
    row = ConnectorConfig(enterprise_id=enterprise_id, device_id=device_id, name=name or f"conn {secrets.token_hex(3)}",
                          type=type, config=config or dict(MODBUS_CONFIG), enabled=enabled, status="stopped")
    db.add(row)
    db.flush()
    return row


def register_isolation_builders() -> None:
    from isolation_registry import IsolationTenant, register

    @register("/api/connectors", bodies={
        "PATCH /api/connectors/{connector_id}": {"name": "renamed by another tenant"}})
    def _connector(db: Session, tenant: IsolationTenant) -> int:
        return make_connector(db, tenant.enterprise_id).id
