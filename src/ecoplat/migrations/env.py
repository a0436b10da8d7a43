"""Alembic environment: uses the connection handed in by ecoplat.migrations_runner, or the URL."""

from __future__ import annotations

from alembic import context

from ecoplat.db import Base, make_engine
from ecoplat.models import load_all_models
from ecoplat.telemetry.sqlite import TABLES as TELEMETRY_FILE_TABLES

load_all_models()
config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()


# Objects created by hand in migrations (text-search indexes), which the models do not declare;
# autogenerate must not propose dropping them.
UNMODELLED = ("enterprises_fts", "ix_enterprises_name_trgm")




def _include_name(name, type_, parent_names) -> bool:  # type: ignore[no-untyped-def]
    return not (name and name.startswith(UNMODELLED))


def _include_object_for(dialect: str):  # type: ignore[no-untyped-def]
    def include(obj, name, type_, reflected, compare_to) -> bool:  # type: ignore[no-untyped-def]
        table = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", None)
        # On SQLite the telemetry store's tables live in a file of their own (migration 0006).
        return not (dialect == "sqlite" and table in TELEMETRY_FILE_TABLES)

    return include


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_name=_include_name,
        include_object=_include_object_for(connection.dialect.name),
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
