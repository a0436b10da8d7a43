"""`ecoplat bench tenancy` end to end at a tiny size on SQLite: seeding, the platform in its own
process, the load generator in another, the database and HTTP baselines, and the one JSON line.
Not a timed test: it checks the shape of the result and that every request succeeded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENDPOINTS = ("list", "search", "detail")
FIGURES = ("count", "errors", "p50_ms", "p95_ms", "p99_ms", "max_ms", "throughput_rps")


@pytest.fixture(scope="module")
def bench_result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    workdir = tmp_path_factory.mktemp("bench")
    cmd = [sys.executable, "-m", "bench.tenancy", "--backend", "sqlite", "--enterprises", "200",
           "--users-per-enterprise", "2", "--duration", "2", "--baseline-duration", "1", "--warmup", "0.5",
           "--concurrency", "2", "--workdir", str(workdir)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    return json.loads(last)


# The end-to-end tests start three servers and two load generators: tens of seconds each run.
@pytest.mark.slow
def test_bench_tenancy_prints_one_json_object_with_every_endpoint_and_baseline(bench_result: dict) -> None:
    assert bench_result["benchmark"] == "tenancy"
    assert bench_result["enterprises"] == 200
    assert set(bench_result["backends"]) == {"sqlite"}
    sqlite = bench_result["backends"]["sqlite"]
    assert sqlite["seed"]["enterprises"] == 200
    # 200 enterprises × 2 users + the platform admin who signs in.
    assert sqlite["seed"]["users"] == 401
    assert "fts5" in sqlite["seed"]["search_index"]
    for ep in ENDPOINTS:
        figures = sqlite["endpoints"][ep]
        for key in FIGURES:
            assert key in figures, (ep, key)
        assert figures["count"] > 0, ep
        assert figures["p50_ms"] <= figures["p95_ms"] <= figures["p99_ms"] <= figures["max_ms"]
        assert sqlite["baseline"]["db"][ep]["count"] > 0, ep
        assert isinstance(sqlite["ratio_p95"][ep], float | int)
    assert sqlite["baseline"]["http_floor"]["count"] > 0
    assert isinstance(bench_result["meets_target"], bool)
    assert sqlite["meets_target"] == (
        all(sqlite["endpoints"][ep]["p95_ms"] < sqlite["target_p95_ms"]
            and sqlite["endpoints"][ep]["errors"] == 0 for ep in ENDPOINTS))


@pytest.mark.slow
def test_bench_tenancy_requests_all_succeed_and_pages_walk_the_list(bench_result: dict) -> None:
    sqlite = bench_result["backends"]["sqlite"]
    assert sqlite["error_samples"] == []
    for ep in ENDPOINTS:
        assert sqlite["endpoints"][ep]["errors"] == 0, sqlite["error_samples"]
        assert sqlite["baseline"]["db"][ep]["errors"] == 0, sqlite["baseline"]["db_error_samples"]
    # Pages of 50 from start points spread over the list: walks pass the first page.
    assert sqlite["endpoints"]["list"]["rows_per_request"] > 0
    assert sqlite["list_max_depth_rows"] > 50
    # Searches use brand names of seeded enterprises, so they find something.
    assert sqlite["endpoints"]["search"]["rows_per_request"] >= 1
    assert sqlite["baseline"]["db"]["search"]["rows_per_request"] >= 1
    # The plans show index use: the keyset page is a primary-key range, search goes through FTS5.
    assert "PRIMARY KEY" in sqlite["plans"]["list_after"]
    assert "enterprises_fts" in sqlite["plans"]["search"]


def test_percentiles_interpolate_between_ranks() -> None:
    from bench._common import latency_summary, percentile

    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 95) == 5.0
    summary = latency_summary([0.001 * i for i in range(1, 101)], duration_s=2.0)
    assert summary["count"] == 100
    assert summary["p50_ms"] == 50.5
    assert summary["p95_ms"] == 95.05
    assert summary["max_ms"] == 100.0
    assert summary["throughput_rps"] == 50.0


def test_baseline_search_binds_what_the_tenancy_service_binds() -> None:
    """The database baseline must run the service's own search, or the ratio means nothing."""
    from bench.tenancy import search_param

    from ecoplat.tenancy import service

    for fragment in ("Hengtai", "50%_off\\", 'say "hi"', "ab"):
        assert search_param("postgresql", fragment) == service._like_pattern(fragment)
    assert search_param("sqlite", 'Heng"tai') == '"Heng""tai"'
    assert search_param("sqlite", "ab") == service._like_pattern("ab")  # too short for trigrams


def test_ecoplat_bench_name_help_lists_the_benchmarks_own_options() -> None:
    proc = subprocess.run([sys.executable, "-m", "ecoplat.cli", "bench", "alarms", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--rate" in proc.stdout and "--excursion" in proc.stdout
    unknown = subprocess.run([sys.executable, "-m", "ecoplat.cli", "bench", "nosuch"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "alarms" in unknown.stdout + unknown.stderr
