"""Opens the telemetry store that fits the database URL: a SQLite file beside the app's by
default, PostgreSQL (partitioned, COPY) when the platform runs on PostgreSQL."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy.engine import make_url

from ecoplat.config import Settings
from ecoplat.telemetry.base import SqlTelemetryStore


def open_store(url_or_settings: str | Settings) -> SqlTelemetryStore:
    """A TelemetryStore for a SQLAlchemy URL (or the settings' database URL). The tables must
    exist (migrations 0002 and, on SQLite, 0006)."""
    url = (url_or_settings.resolved_database_url if isinstance(url_or_settings, Settings)
           else url_or_settings)
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        from ecoplat.telemetry.sqlite import SqliteTelemetryStore, telemetry_path

        if not parsed.database or parsed.database == ":memory:":
            raise ValueError("the SQLite telemetry store needs a database file, not :memory:")
        return SqliteTelemetryStore(telemetry_path(parsed.database))
    if backend == "postgresql":
        from ecoplat.telemetry.postgres import PostgresTelemetryStore

        conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        return PostgresTelemetryStore(conninfo)
    raise ValueError(f"no telemetry store for database URL scheme '{parsed.drivername}'")


_open_lock = threading.Lock()


def store_for(app: Any) -> SqlTelemetryStore:
    """The app's store (app.state.telemetry, opened by the telemetry runtime); opened on first
    use when the runtime is not running, e.g. an app serving only the API."""
    store = getattr(app.state, "telemetry", None)
    if store is None:
        with _open_lock:
            store = getattr(app.state, "telemetry", None)
            if store is None:
                store = open_store(app.state.db.url)
                app.state.telemetry = store
    return store
