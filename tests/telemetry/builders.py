"""Builders for telemetry tests: unique device ids for store-level tests, points, and a committed
tenant (enterprise, users, devices with tokens) for API tests that need real connections."""

from __future__ import annotations

import contextlib
import itertools
import random
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ecoplat.connect.ingest import hash_token
from ecoplat.connect.models import Device
from ecoplat.db import Database
from ecoplat.telemetry.points import Point, Value
from ecoplat.telemetry.store import open_store
from ecoplat.telemetry.writer import ProcessWriteStore
from ecoplat.tenancy.auth import hash_password, issue_tokens
from ecoplat.tenancy.models import Enterprise, Role, SizeClass, User

T0 = 1_764_201_600_000  # 2025-11-27 00:00:00 UTC, a Thursday
# Store-level tests share one database per run: each takes device ids nobody else uses.
_device_ids = itertools.count(random.randint(1, 1000) * 1_000_000)
_enterprise_ids = itertools.count(random.randint(1, 1000) * 1_000_000)


def new_device_id() -> int:
    return next(_device_ids)


def new_enterprise_id() -> int:
    return next(_enterprise_ids)


def points(device_id: int, key: str, samples: Iterable[tuple[int, Value]]) -> list[Point]:
    return [Point(device_id, key, ts, v) for ts, v in samples]


@dataclass
class Tenant:
    enterprise_id: int
    admin_headers: dict[str, str]
    operator_headers: dict[str, str]
    devices: dict[str, tuple[int, str]] = field(default_factory=dict)  # name -> (id, token)


_PASSWORD_HASH: list[str] = []


def _hash() -> str:
    if not _PASSWORD_HASH:
        _PASSWORD_HASH.append(hash_password("not-used-in-these-tests"))
    return _PASSWORD_HASH[0]


def make_tenant(database: Database, secret: str, *device_names: str) -> Tenant:
    """An enterprise with an admin and an operator and devices, committed (the store reads and
    writes on its own connections, so the rows must be visible to them)."""
    with database.session() as s:
        ent = Enterprise(name=f"Tianjin Chlor-Alkali {secrets.token_hex(3)}", country="CN",
                         isic_class="2011", size_class=SizeClass.small)
        s.add(ent)
        s.flush()
        headers = {}
        for role in (Role.enterprise_admin, Role.operator):
            user = User(enterprise_id=ent.id, email=f"{role.value}-{secrets.token_hex(4)}@example.com",
                        password_hash=_hash(), roles=[role.value])
            s.add(user)
            s.flush()
            token = issue_tokens(user, secret=secret, access_minutes=60, refresh_days=1)["access_token"]
            headers[role] = {"Authorization": f"Bearer {token}"}
        tenant = Tenant(ent.id, headers[Role.enterprise_admin], headers[Role.operator])
        for name in device_names:
            add_device(s, tenant, name)
    return tenant


def add_device(session, tenant: Tenant, name: str) -> int:  # type: ignore[no-untyped-def]
    token = secrets.token_urlsafe(15)
    device = Device(enterprise_id=tenant.enterprise_id, name=name, token_hash=hash_token(token),
                    token_prefix=token[:6])
    session.add(device)
    session.flush()
    tenant.devices[name] = (device.id, token)
    return device.id


def process_gone(pid: int, timeout: float = 10.0) -> bool:
    """The process has exited (reaped, or a zombie its parent has not waited for yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


@contextlib.contextmanager
def open_process_store(url: str) -> Iterator[ProcessWriteStore]:
    """The platform's store for `url`: writes in a child process, reads here."""
    s = open_store(url, write_process=True)
    assert isinstance(s, ProcessWriteStore)
    try:
        yield s
    finally:
        s.close()
