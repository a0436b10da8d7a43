"""Telemetry fixtures: the real store on the run's migrated database (SQLite, and PostgreSQL
when enabled), and, per backend, an app on a database of its own with committed tenants (the
store writes on its own connections, which a rolled-back test transaction would block)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from conftest import drop_postgres_database, free_port, new_database_url
from ecoplat.app import create_app
from ecoplat.config import Settings
from ecoplat.db import Database
from ecoplat.migrations_runner import upgrade
from ecoplat.telemetry.base import SqlTelemetryStore
from ecoplat.telemetry.store import open_store, store_for

from .builders import Tenant, make_tenant

SECRET = "telemetry-test-secret-" + "y" * 32


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A migrated SQLite database of the test's own (telemetry file included)."""
    url = f"sqlite:///{tmp_path / 'plant.db'}"
    upgrade(url)
    return url


@pytest.fixture(scope="module")
def store(database_url: str) -> Iterator[SqlTelemetryStore]:
    s = open_store(database_url)
    yield s
    s.close()


@dataclass
class ApiEnv:
    url: str
    settings: Settings
    database: Database
    app: FastAPI
    client: TestClient
    store: SqlTelemetryStore
    a: Tenant  # devices E-101, E-102, T-201
    b: Tenant  # device B-1


@pytest.fixture(scope="session")
def api(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiEnv]:
    tmp: Path = tmp_path_factory.mktemp("telemetry-api")
    url = new_database_url(backend, tmp)
    upgrade(url)
    settings = Settings(data_dir=tmp / "var", database_url=url, secret_key=SECRET, mqtt_enabled=False,
                        log_json=False)
    database = Database(url)
    app = create_app(settings, database=database, start_runtime=False)
    a = make_tenant(database, SECRET, "E-101", "E-102", "T-201")
    b = make_tenant(database, SECRET, "B-1")
    with TestClient(app) as client:
        yield ApiEnv(url, settings, database, app, client, store_for(app), a, b)
    app.state.telemetry.close()
    database.dispose()
    if backend == "postgres":
        drop_postgres_database(url)


@pytest.fixture(scope="session")
def live_server(api: ApiEnv) -> Iterator[str]:
    """The same app served by a real uvicorn on a free port (Server-Sent Events need a real
    streaming connection)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(api.app, host="127.0.0.1", port=port, lifespan="off",
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(5)
