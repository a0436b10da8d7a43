"""Fixtures for the ingest tests: a real migrated database of its own (the writer thread uses real
connections), the real telemetry store on it, and a running IngestPipeline."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from tests.conftest import drop_postgres_database, free_port, new_database_url
from tests.connect.builders import SECRET, make_actor

from ecoplat.app import create_app
from ecoplat.config import Settings
from ecoplat.connect.ingest import IngestPipeline, hash_token
from ecoplat.connect.models import Device
from ecoplat.db import Database
from ecoplat.events import EventBus
from ecoplat.migrations_runner import upgrade
from ecoplat.telemetry.store import open_store


@dataclass
class Seeded:
    enterprise_id: int
    user_token: str
    devices: dict[str, tuple[int, str]]  # name → (id, access token)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.user_token}"}


def seed(database: Database, *names: str, gateways: tuple[str, ...] = ()) -> Seeded:
    """An enterprise, its admin and devices with access tokens, committed."""
    with database.session() as s:
        actor = make_actor(s)
        devices = {}
        for name in names + gateways:
            token = secrets.token_urlsafe(15)
            d = Device(enterprise_id=actor.enterprise_id, name=name, token_hash=hash_token(token),
                       token_prefix=token[:6], is_gateway=name in gateways)
            s.add(d)
            s.flush()
            devices[name] = (d.id, token)
    return Seeded(actor.enterprise_id, actor.token, devices)


@pytest.fixture(scope="module")
def module_database_url(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database of its own per test module and backend, for tests whose background
    threads need real connections. Tests share it, each seeding its own enterprise and devices,
    so creating and migrating a database (seconds on PostgreSQL) happens once per module."""
    url = new_database_url(backend, tmp_path_factory.mktemp("connect-db"))
    upgrade(url)
    yield url
    if backend == "postgres":
        drop_postgres_database(url)


@pytest.fixture
def real_db(module_database_url: str) -> Iterator[Database]:
    database = Database(module_database_url)
    yield database
    database.dispose()


@pytest.fixture
def store(module_database_url: str):  # type: ignore[no-untyped-def]
    s = open_store(module_database_url)
    yield s
    s.close()


@pytest.fixture
def pipeline(real_db: Database, store) -> Iterator[IngestPipeline]:  # type: ignore[no-untyped-def]
    p = IngestPipeline(database=real_db, store=store, events=EventBus(), batch_max_points=1000,
                       batch_max_ms=20, queue_max_points=10_000)
    p.start()
    yield p
    p.stop()


@pytest.fixture
def server(module_database_url: str, tmp_path: Path) -> Iterator[tuple[str, Database]]:
    """The app (real lifespan: telemetry store, ingest) served by uvicorn on a free port."""
    settings = Settings(data_dir=tmp_path / "var", database_url=module_database_url, secret_key=SECRET,
                        mqtt_enabled=False, log_json=False, ingest_batch_max_ms=5)
    database = Database(module_database_url)
    port = free_port()
    config = uvicorn.Config(create_app(settings, database=database), host="127.0.0.1", port=port,
                            log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", database
    srv.should_exit = True
    thread.join(10)
    database.dispose()
