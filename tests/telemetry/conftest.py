"""Telemetry fixtures: the real store on the run's migrated database (SQLite, and PostgreSQL
when enabled), and a committed tenant per module for API tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ecoplat.telemetry.base import SqlTelemetryStore
from ecoplat.telemetry.store import open_store


@pytest.fixture(scope="module")
def store(database_url: str) -> Iterator[SqlTelemetryStore]:
    s = open_store(database_url)
    yield s
    s.close()
