"""schemathesis generates requests from the OpenAPI spec for every operation of the app (all
domains) and sends them with a valid platform admin token: no request may end in a 5xx."""

from __future__ import annotations

import re
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from ecoplat.app import create_app
from ecoplat.config import Settings
from ecoplat.db import Database
from ecoplat.tenancy.models import Role
from tenancy.builders import headers_for, make_tree, make_user

# Small enough that all operations on both backends stay near a minute on 2 cores.
MAX_EXAMPLES = 5


@pytest.fixture(scope="module")
def fuzz_target(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, dict[str, str]]]:
    """An app on its own migrated database (the fuzzer's writes are real and committed), with a
    tree of objects so that valid ids exist, and a platform admin's token."""
    from conftest import drop_postgres_database, new_database_url
    from ecoplat.migrations_runner import upgrade

    tmp: Path = tmp_path_factory.mktemp("fuzz")
    url = new_database_url(backend, tmp)
    upgrade(url)
    app_settings = Settings(data_dir=tmp / "var", database_url=url, secret_key="fuzz-secret-" + "y" * 32,
                            mqtt_enabled=False, log_json=False)
    database = Database(url)
    with database.session() as db:
        tree = make_tree(db, app_settings)
        admin = make_user(db, tree.enterprise, Role.platform_admin)
        headers = headers_for(app_settings, admin)
    # The runtime (telemetry store, ingest, alarm engine) runs as in production: schemathesis
    # starts the app lifespan itself.
    app = create_app(app_settings, database=database, start_runtime=True)
    yield app, headers
    database.dispose()
    if backend == "postgres":
        drop_postgres_database(url)


def _streaming_paths(app: Any) -> list[str]:
    """Operations that answer an endless stream (SSE) cannot be fuzzed request by request."""
    out = []
    for path, ops in app.openapi()["paths"].items():
        for op in ops.values():
            for response in op.get("responses", {}).values():
                if "text/event-stream" in response.get("content", {}):
                    out.append(path)
    return out


def test_no_request_ends_in_a_server_error(fuzz_target: tuple[Any, dict[str, str]]) -> None:
    app, headers = fuzz_target
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    streams = _streaming_paths(app)
    if streams:
        schema = schema.exclude(path_regex="^(" + "|".join(re.escape(p) for p in streams) + ")$")
    # One hypothesis run per operation (schemathesis' pytest plugin does not load lazily under
    # pytest 9), collecting every operation's failure instead of stopping at the first.
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=[not_a_server_error])

        try:
            fuzz()
        except Exception as e:  # noqa: BLE001 - every operation's failure is reported together
            detail = "".join(traceback.format_exception(e))
            failures.append(f"{operation.method.upper()} {operation.path}: {detail[-2500:]}")
    assert operations >= 40, f"only {operations} operations in the OpenAPI spec"
    assert not failures, f"{len(failures)} operation(s) answered 5xx:\n\n" + "\n\n".join(failures)
