"""Fixtures for the alarm tests: a migrated database per module with the real ingest pipeline,
telemetry store and alarm runtime running on it (no ticker: tests feed time explicitly)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ecoplat.alarms.notifications import Dispatcher
from ecoplat.alarms.runtime import AlarmRuntime
from ecoplat.alarms.writer import ProcessAlarmWriter
from ecoplat.connect.ingest import IngestPipeline
from ecoplat.db import Database
from ecoplat.events import Event, EventBus
from ecoplat.migrations_runner import upgrade
from ecoplat.telemetry.store import open_store


def _root_conftest() -> Any:
    # Other test folders have a conftest.py of their own that may hold the name "conftest" in
    # sys.modules; load the root one by its path (the same module name the connect tests use).
    path = Path(__file__).resolve().parents[1] / "conftest.py"
    spec = importlib.util.spec_from_file_location("ecoplat_tests_root_conftest", path)
    assert spec is not None and spec.loader is not None
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module


_root = _root_conftest()
new_database_url = _root.new_database_url
drop_postgres_database = _root.drop_postgres_database
free_port = _root.free_port


@dataclass
class Pipeline:
    database: Database
    events: EventBus
    ingest: IngestPipeline
    alarms: AlarmRuntime
    seen: list[Event]

    def alarm_events(self, enterprise_id: int) -> list[Event]:
        return [e for e in list(self.seen) if e.topic == f"alarm.{enterprise_id}"]


@pytest.fixture(scope="module")
def pipeline(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    url = new_database_url(backend, tmp_path_factory.mktemp("alarms"))
    upgrade(url)
    database = Database(url)
    events = EventBus()
    store = open_store(url)
    ingest = IngestPipeline(database=database, store=store, events=events, batch_max_points=1000,
                            batch_max_ms=5)
    ingest.start()
    # The dispatcher polls fast here so notification tests need not wait long. The alarm writes
    # run in a child process, as in the app.
    runtime = AlarmRuntime(database, events, dispatcher=Dispatcher(database, poll_interval_s=0.05,
                                                                   backoff_base_s=0.05, backoff_max_s=0.2),
                           writer=ProcessAlarmWriter(url))
    runtime.start()
    runtime.writer.wait_ready()  # type: ignore[union-attr]
    unsubscribe = ingest.add_receiver(runtime.on_points)
    seen: list[Event] = []
    remove = events.add_listener("alarm.", seen.append)
    yield Pipeline(database, events, ingest, runtime, seen)
    remove()
    unsubscribe()
    runtime.stop()
    ingest.stop()
    store.close()
    database.dispose()
    if backend == "postgres":
        drop_postgres_database(url)
