"""Fixtures for the page tests: the demo ecosystems seeded once per backend into their own
migrated database; each test runs on top of it in a transaction that is rolled back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from tests.conftest import drop_postgres_database, new_database_url

from ecoplat.config import Settings
from ecoplat.db import Database, make_engine
from ecoplat.demo import DemoResult, seed_demo
from ecoplat.migrations_runner import upgrade

from .builders import DemoWorld

SECRET = "web-test-secret-" + "x" * 32


@pytest.fixture(scope="session")
def demo_seeded(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, DemoResult]]:
    """A migrated database with the demo seeded (argon2 hashes make seeding cost seconds: once)."""
    tmp = tmp_path_factory.mktemp("demo-db")
    url = new_database_url(backend, tmp)
    upgrade(url)
    data_dir = tmp / "var"
    result = seed_demo(Settings(data_dir=data_dir, database_url=url, secret_key=SECRET))
    yield url, data_dir, result
    if backend == "postgres":
        drop_postgres_database(url)


@pytest.fixture(scope="session")
def demo_engine(demo_seeded: tuple[str, Path, DemoResult]) -> Iterator[Engine]:
    engine = make_engine(demo_seeded[0])
    yield engine
    engine.dispose()


@pytest.fixture
def demo_database(demo_seeded: tuple[str, Path, DemoResult], demo_engine: Engine) -> Iterator[Database]:
    conn = demo_engine.connect()
    trans = conn.begin()
    yield Database(demo_seeded[0], engine=demo_engine, bind=conn, join_transaction_mode="create_savepoint")
    trans.rollback()
    conn.close()


@pytest.fixture
def demo_settings(demo_seeded: tuple[str, Path, DemoResult], tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "var", database_url=demo_seeded[0], secret_key=SECRET,
                    mqtt_enabled=False, log_json=False)


@pytest.fixture
def demo(demo_seeded: tuple[str, Path, DemoResult], demo_database: Database, demo_settings: Settings) -> DemoWorld:
    return DemoWorld(result=demo_seeded[2], database=demo_database, settings=demo_settings)


@pytest.fixture
def web_app(demo_settings: Settings, demo_database: Database):  # type: ignore[no-untyped-def]
    from ecoplat.app import create_app

    return create_app(demo_settings, database=demo_database, start_runtime=False)


@pytest.fixture
def web(web_app) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(web_app, follow_redirects=False) as c:
        yield c
