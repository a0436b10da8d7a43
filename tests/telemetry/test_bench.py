"""bench/telemetry_store.py at a tiny size: it runs, and prints one JSON object last with the
store's rate beside the bare baseline for each batch size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_store_bench_prints_rates_and_baselines(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "src")]))
    proc = subprocess.run([sys.executable, "-m", "bench.telemetry_store", "--backends", "sqlite",
                           "--points", "4000", "--series", "200", "--batches", "100,1000",
                           "--workdir", str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["benchmark"] == "telemetry_store"
    for size in ("batch_100", "batch_1000"):
        figures = result["backends"]["sqlite"][size]
        assert figures["store_points_s"] > 0 and figures["baseline_executemany_points_s"] > 0
        expected = figures["store_points_s"] / figures["baseline_executemany_points_s"]
        assert abs(figures["ratio"] - expected) < 0.002
        # CPU-time rates beside the wall rates: a process cannot do more CPU work than wall time
        # on one thread, so its points per CPU second are at least its points per wall second.
        assert figures["store_points_cpu_s"] >= figures["store_points_s"] * 0.9
        cpu_expected = figures["store_points_cpu_s"] / figures["baseline_executemany_points_cpu_s"]
        assert abs(figures["ratio_cpu"] - cpu_expected) < 0.002
