"""Opens the telemetry store that fits the database URL: a SQLite file beside the app's by
default, PostgreSQL (partitioned, COPY) when the platform runs on PostgreSQL."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ecoplat.telemetry.base import SqlTelemetryStore

if TYPE_CHECKING:
    from ecoplat.config import Settings

# SQLAlchemy and the settings are imported where used: the writer process imports this module
# for open_target() alone, and starts faster without them.


def open_store(url_or_settings: str | Settings, *, write_process: bool = False,
               writer_nice: int = 0) -> SqlTelemetryStore:
    """A TelemetryStore for a SQLAlchemy URL (or the settings' database URL). The tables must
    exist (migrations 0002 and, on SQLite, 0006). With write_process, its writes run in a child
    process and its reads here (telemetry/writer.py): what the platform process does, its
    child's CPU priority lowered by writer_nice."""
    url = url_or_settings if isinstance(url_or_settings, str) else url_or_settings.resolved_database_url
    target = store_target(url)
    reader = open_target(target)
    if not write_process:
        return reader
    from ecoplat.telemetry.writer import ProcessWriteStore

    try:
        return ProcessWriteStore(target, reader, nice=writer_nice)
    except BaseException:
        reader.close()
        raise


def open_platform_store(settings: Settings, url: str | None = None) -> SqlTelemetryStore:
    """The platform's store for `url` (default: the settings' database URL), its writes where
    the settings put them (telemetry_write_process, telemetry_writer_nice)."""
    return open_store(url or settings.resolved_database_url, write_process=settings.telemetry_write_process,
                      writer_nice=settings.telemetry_writer_nice)


def store_target(url: str) -> tuple[str, str]:
    """(backend, where): the telemetry file of a SQLite URL, the libpq conninfo of a PostgreSQL one."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        from ecoplat.telemetry.sqlite import telemetry_path

        if not parsed.database or parsed.database == ":memory:":
            raise ValueError("the SQLite telemetry store needs a database file, not :memory:")
        return "sqlite", telemetry_path(parsed.database)
    if backend == "postgresql":
        return "postgresql", parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    raise ValueError(f"no telemetry store for database URL scheme '{parsed.drivername}'")


def open_target(target: tuple[str, str], *, defer: bool = False) -> SqlTelemetryStore:
    """Opens a store_target() (without SQLAlchemy: the writer process imports only this).
    defer: the writer process's store, which may put rollups off (telemetry/sqlite.py)."""
    backend, where = target
    if backend == "sqlite":
        from ecoplat.telemetry.sqlite import SqliteTelemetryStore

        return SqliteTelemetryStore(where, defer=defer)
    from ecoplat.telemetry.postgres import PostgresTelemetryStore

    return PostgresTelemetryStore(where)


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
