"""SQLAlchemy 2 engine and sessions. One unit of work per request or job: the dependency
commits or rolls back at the end; services only flush()."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import JSON, DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# JSON that is JSONB on PostgreSQL.
JSONType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored in UTC; naive values coming back from SQLite are tagged UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


WAL_AUTOCHECKPOINT_PAGES = 40_000


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA cache_size=-65536")
    cur.execute("PRAGMA temp_store=MEMORY")
    # Whichever connection commits past this many WAL pages copies the WAL back into the
    # database (and syncs it) before its commit returns. These connections carry alarm writes,
    # device status and HTTP requests: at SQLite's default of 1,000 pages a checkpoint ran
    # inside an alarm's path to its operator every few seconds under load. (Telemetry has a
    # file of its own, see telemetry/sqlite.py.)
    cur.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    cur.close()


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"check_same_thread": False, "timeout": 30}
        if path in ("", ":memory:"):
            kwargs.setdefault("poolclass", StaticPool)
        else:
            kwargs.setdefault("pool_size", 20)
            kwargs.setdefault("max_overflow", 40)
        engine = create_engine(url, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # More connections than the 40 worker threads that run sync routes and dependencies: a request
    # holding a connection must always find a thread to finish on, or the pool deadlocks under load.
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 50)
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


class Database:
    """The engine and session factory for one app or command; created by the app factory or CLI."""

    def __init__(self, url: str, engine: Engine | None = None, *, bind: Any = None,
                 **session_kwargs: Any) -> None:
        self.url = url
        self.engine = engine or make_engine(url)
        self._bound_elsewhere = bind is not None
        # Tests bind sessions to one connection inside a transaction that is rolled back.
        self.sessionmaker = sessionmaker(bind=bind if bind is not None else self.engine,
                                         expire_on_commit=False, **session_kwargs)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @property
    def shareable(self) -> bool:
        """Whether another process opening `url` sees the same data as these sessions: not an
        in-memory SQLite database, nor sessions bound to one connection (a test's transaction)."""
        if self._bound_elsewhere:
            return False
        return not (self.is_sqlite and self.engine.url.database in (None, "", ":memory:"))

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: commits on success, rolls back on error."""
        s = self.sessionmaker()
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    def dispose(self) -> None:
        self.engine.dispose()


def get_db(request: Request) -> Iterator[Session]:
    database: Database = request.app.state.db
    with database.session() as s:
        yield s


# scope="function": the unit of work commits before the response is sent. With the default
# ("request") the commit ran after the client had its answer, so a redirect's follow-up GET
# or a client's next call could read before the write was committed, and a failed commit
# was never reported to the client that had been told it succeeded.
DbSession = Annotated[Session, Depends(get_db, scope="function")]
