"""Shared fixtures: a migrated database per backend (SQLite always; PostgreSQL when CI=true or
ECOPLAT_TEST_POSTGRES_URL is set, and then a missing server fails the run), a rolled-back
session per test, the app, and the external services CI provides (Mosquitto)."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from ecoplat.config import Settings
from ecoplat.db import Database, make_engine
from ecoplat.migrations_runner import upgrade

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
POSTGRES_ADMIN_URL = os.environ.get(
    "ECOPLAT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
POSTGRES_WANTED = IN_CI or "ECOPLAT_TEST_POSTGRES_URL" in os.environ
BACKENDS = ["sqlite", "postgres"] if POSTGRES_WANTED else ["sqlite"]


def _port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _unavailable(what: str) -> None:
    """In CI a missing service fails the run; on a laptop the suite skips, saying why."""
    if IN_CI:
        pytest.fail(f"{what} is required when CI=true but is not reachable", pytrace=False)
    pytest.skip(f"{what} not reachable; set CI=true to make this a failure")


def create_postgres_database() -> str:
    """A fresh, empty PostgreSQL database; returns its URL."""
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            name = f"ecoplat_t_{secrets.token_hex(4)}"
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:  # noqa: BLE001
        admin.dispose()
        _unavailable(f"PostgreSQL at {POSTGRES_ADMIN_URL} ({type(e).__name__}: {e})")
        raise
    admin.dispose()
    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def drop_postgres_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def new_database_url(backend: str, tmp_dir: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_dir / f'ecoplat-{secrets.token_hex(4)}.db'}"
    return create_postgres_database()


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (make test), the tests on the machine's own Mosquitto run in one worker:
    its topic space is shared by every process, and two bridges on it would take each other's
    messages. Everything else brings its own database, broker and ports."""
    for item in items:
        if "mosquitto" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("system-mosquitto"))


@pytest.fixture(scope="session")
def database_url(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One migrated database per backend for the whole run."""
    url = new_database_url(backend, tmp_path_factory.mktemp("db"))
    upgrade(url)
    yield url
    if backend == "postgres":
        drop_postgres_database(url)


@pytest.fixture(scope="session")
def engine(database_url: str):  # type: ignore[no-untyped-def]
    eng = make_engine(database_url)
    yield eng
    eng.dispose()


@pytest.fixture
def database(database_url: str, engine) -> Iterator[Database]:  # type: ignore[no-untyped-def]
    """A Database whose sessions all join one outer transaction that is rolled back after the test."""
    conn = engine.connect()
    trans = conn.begin()
    yield Database(database_url, engine=engine, bind=conn, join_transaction_mode="create_savepoint")
    trans.rollback()
    conn.close()


@pytest.fixture
def db(database: Database) -> Iterator[Session]:
    s = database.sessionmaker()
    yield s
    s.close()


@pytest.fixture
def fresh_database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A new migrated database for tests that run background work on real connections."""
    url = new_database_url(backend, tmp_path)
    upgrade(url)
    yield url
    if backend == "postgres":
        drop_postgres_database(url)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "var", database_url=database_url, secret_key="test-secret-" + "x" * 32,
                    mqtt_enabled=False, log_json=False)


@pytest.fixture
def app(settings: Settings, database: Database):  # type: ignore[no-untyped-def]
    from ecoplat.app import create_app

    return create_app(settings, database=database, start_runtime=False)


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="session")
def mosquitto() -> tuple[str, int]:
    """The Mosquitto broker CI runs on 127.0.0.1:1883."""
    host, port = "127.0.0.1", int(os.environ.get("ECOPLAT_TEST_MOSQUITTO_PORT", "1883"))
    if not _port_open(host, port):
        _unavailable(f"Mosquitto at {host}:{port}")
    return host, port


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
