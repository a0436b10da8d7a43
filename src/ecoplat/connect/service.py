"""Devices, profiles, tokens, attributes and provisioning. Keyword-only functions that take the
session and the acting principal; every read and write is scoped by tenant here."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from ecoplat.connect.models import Device
from ecoplat.errors import NotFound
from ecoplat.tenancy.auth import Principal


def get_device(db: Session, *, actor: Principal, device_id: int) -> Device:
    """The device if the actor's enterprise owns it (or, while unclaimed, provisioned it);
    404 otherwise, so another tenant cannot even learn that the id exists."""
    device = db.get(Device, device_id)
    if device is None or not _visible(actor, device):
        raise NotFound("device", device_id)
    return device


def _visible(actor: Principal, device: Device) -> bool:
    if actor.is_platform_admin:
        return True
    if device.enterprise_id is not None:
        return device.enterprise_id == actor.enterprise_id
    return device.provisioned_by_enterprise_id == actor.enterprise_id


__all__ = ["get_device", "select"]
