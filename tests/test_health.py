"""/api/health (database reachable, migrations current) and the Prometheus metrics at /metrics."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from ecoplat.app import create_app
from ecoplat.config import Settings
from ecoplat.db import Database
from ecoplat.migrations_runner import head_revisions, upgrade


def test_health_is_ok_on_a_migrated_database(client) -> None:  # type: ignore[no-untyped-def]
    r = client.get("/api/health")
    assert r.status_code == 200
    assert r.json() | {"version": "?"} == {"status": "ok", "database": "ok", "migrations": "current", "version": "?"}


def _health_of(settings: Settings, url: str) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    database = Database(url)
    try:
        with TestClient(create_app(settings, database=database, start_runtime=False)) as c:
            r = c.get("/api/health")
            return r.status_code, r.json(), r.headers["content-type"]
    finally:
        database.dispose()


def test_health_answers_503_when_migrations_are_behind(settings: Settings, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    if head_revisions(url) != {"0001"}:
        upgrade(url, "0001")  # the first migration only: an older schema than head
    # (otherwise the database stays empty, which is behind head too)
    status, body, ctype = _health_of(settings, url)
    assert status == 503 and ctype.startswith("application/problem+json")
    assert body["database"] == "ok" and body["migrations"] == "behind"
    assert "ecoplat migrate" in body["detail"]


def test_health_answers_503_when_the_database_is_unreachable(settings: Settings) -> None:
    status, body, ctype = _health_of(settings, "postgresql+psycopg://postgres@127.0.0.1:9/nowhere?connect_timeout=2")
    assert status == 503 and ctype.startswith("application/problem+json")
    assert body["database"] == "unreachable"
    assert "unreachable" in body["detail"]


def test_prometheus_metrics_are_served(client) -> None:  # type: ignore[no-untyped-def]
    client.get("/api/health")
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert "ecoplat_http_requests_total" in r.text
    assert 'route="/api/health"' in r.text


def test_requests_are_counted_per_route_template_and_status(client) -> None:  # type: ignore[no-untyped-def]
    import re

    def count(route: str, status: str) -> float:
        text = client.get("/metrics").text
        labels = f'method="GET",route="{re.escape(route)}",status="{status}"'
        found = re.search(r"^ecoplat_http_requests_total\{" + labels + r"\} (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    before_401, before_404 = count("/api/enterprises/{enterprise_id}", "401"), count("unmatched", "404")
    client.get("/api/enterprises/7")
    client.get("/api/enterprises/8")
    client.get("/no/such/route")
    assert count("/api/enterprises/{enterprise_id}", "401") == before_401 + 2
    assert count("unmatched", "404") == before_404 + 1
    assert 'ecoplat_http_request_seconds_count{method="GET",route="/api/enterprises/{enterprise_id}"}' in \
        client.get("/metrics").text


def test_garbage_collection_pauses_are_measured_and_full_collections_are_rare(client) -> None:  # type: ignore[no-untyped-def]
    import gc
    import re

    gc.collect()
    text = client.get("/metrics").text
    full = re.search(r'^ecoplat_gc_pause_seconds_count\{generation="2"\} (\S+)$', text, re.M)
    assert full is not None and float(full.group(1)) >= 1
    # young collections after 50,000 allocations, not 700; a full one about as often as before
    assert gc.get_threshold() == (50_000, 10, 14)
