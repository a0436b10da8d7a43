"""`ecoplat bench alarms` end to end at a tiny size: the platform in this process's child, real
publisher processes over MQTT, the one JSON line with every figure. Not a timed test: it checks the
shape of the result, that rules were compiled for every device and that alarm events arrived."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_bench_alarms_prints_one_json_object_with_every_figure(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "bench.alarms", "--devices", "20", "--gateways", "4", "--messages", "400", "--processes", "1",
           "--rounds", "1", "--latency-seconds", "2", "--excursion", "0.5", "--workdir", str(tmp_path)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("p50_alarm_ms", "p99_alarm_ms", "msgs_s_rules_off", "msgs_s_rules_on", "throughput_cost"):
        assert key in result, key
    assert result["rules"] == 200 and result["devices"] == 20
    assert result["msgs_s_rules_off"] > 0 and result["msgs_s_rules_on"] > 0
    # The rates are printed rounded to 0.1 msgs/s; the cost is computed before rounding.
    assert result["throughput_cost"] == pytest.approx(1 - result["msgs_s_rules_on"] / result["msgs_s_rules_off"],
                                                      abs=0.005)
    assert result["alarm_events"] > 0 and result["p50_alarm_ms"] <= result["p99_alarm_ms"]
    assert result["alarm_write_failures"] == 0
    # The serial stages' busy shares: real fractions of the latency phase's wall time.
    assert 0 < result["telemetry_write_busy_share"] <= 1 and 0 < result["alarm_busy_share"] <= 1
