"""Rule scenarios shared by the in-process ingest tests and the MQTT tests: for each rule kind, the
rules, the samples a device sends (ms after T0), the ticks the ticker gives, and the exact
transitions (action, state reached, ms after T0) each rule must produce."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Sample = tuple[int, str, Any]  # (ms after T0, key, value)
Step = tuple[str, str, int]  # (action, state reached, ms after T0)


@dataclass(frozen=True)
class Scenario:
    name: str
    rules: list[dict[str, Any]]
    samples: list[Sample]
    expected: list[list[Step]]
    ticks: list[int] = field(default_factory=list)  # ms after T0, given after the samples up to then

    def __str__(self) -> str:
        return self.name


ALARM, RTN = "alarm", "return_to_normal"
UNACK, RTN_UNACK = "unacknowledged", "rtn_unacknowledged"

SCENARIOS = [
    Scenario(
        "high_limit_deadband_on_off_delay",
        [{"kind": "high", "key": "temp_c", "params": {"limit": 80, "unit": "Cel"}, "deadband": 2,
          "on_delay_s": 2, "off_delay_s": 3, "message_template": "{device} {key} {value} > {limit} {unit}"}],
        [(0, "temp_c", 79.0), (1000, "temp_c", 81.0), (2000, "temp_c", 82.0), (3000, "temp_c", 83.0),
         (4000, "temp_c", 79.0), (5000, "temp_c", 77.0), (6000, "temp_c", 77.5), (7000, "temp_c", 77.0),
         (8000, "temp_c", 76.0)],
        # on-delay: above 80 since 1 s, held 2 s → 3 s; 79 is inside the deadband; below 78 since 5 s,
        # off-delay 3 s → 8 s.
        [[(ALARM, UNACK, 3000), (RTN, RTN_UNACK, 8000)]],
    ),
    Scenario(
        "high_high_and_low_low_limits",
        [{"kind": "high_high", "key": "pressure_kpa", "params": {"limit": 300}, "priority": 1, "deadband": 10},
         {"kind": "low_low", "key": "pressure_kpa", "params": {"limit": 100}, "priority": 1, "deadband": 5}],
        [(0, "pressure_kpa", 200.0), (1000, "pressure_kpa", 301.0), (2000, "pressure_kpa", 295.0),
         (3000, "pressure_kpa", 289.0), (4000, "pressure_kpa", 99.0), (5000, "pressure_kpa", 104.0),
         (6000, "pressure_kpa", 106.0)],
        [[(ALARM, UNACK, 1000), (RTN, RTN_UNACK, 3000)], [(ALARM, UNACK, 4000), (RTN, RTN_UNACK, 6000)]],
    ),
    Scenario(
        "low_limit_on_delay_ignores_short_dips",
        [{"kind": "low", "key": "level_pct", "params": {"limit": 20}, "on_delay_s": 5}],
        [(0, "level_pct", 19.0), (3000, "level_pct", 21.0), (10_000, "level_pct", 18.0),
         (14_000, "level_pct", 18.0), (15_000, "level_pct", 17.0), (16_000, "level_pct", 25.0)],
        [[(ALARM, UNACK, 15_000), (RTN, RTN_UNACK, 16_000)]],
    ),
    Scenario(
        "rate_of_change_per_second_with_deadband",
        [{"kind": "rate_of_change", "key": "temp_c", "params": {"limit": 1.0, "per": "second", "window_s": 2},
          "deadband": 0.2}],
        [(0, "temp_c", 50.0), (1000, "temp_c", 50.5), (2000, "temp_c", 53.0), (3000, "temp_c", 55.0),
         (4000, "temp_c", 56.0), (5000, "temp_c", 56.5), (6000, "temp_c", 56.6)],
        # (53-50)/2 s = 1.5/s at 2 s; (56.5-55)/2 s = 0.75/s < 1-0.2 at 5 s.
        [[(ALARM, UNACK, 2000), (RTN, RTN_UNACK, 5000)]],
    ),
    Scenario(
        "deviation_from_another_key_and_from_a_setpoint",
        [{"kind": "deviation", "key": "flow_pv", "params": {"reference_key": "flow_sp", "limit": 5}},
         {"kind": "deviation", "key": "flow_pv", "params": {"setpoint": 50, "limit": 8}, "on_delay_s": 1}],
        [(0, "flow_sp", 50.0), (0, "flow_pv", 51.0), (1000, "flow_pv", 59.0), (2000, "flow_pv", 59.5),
         (3000, "flow_sp", 57.0), (4000, "flow_pv", 40.0)],
        [[(ALARM, UNACK, 1000), (RTN, RTN_UNACK, 3000), (ALARM, UNACK, 4000)], [(ALARM, UNACK, 2000)]],
    ),
    Scenario(
        "state_match_and_expression",
        [{"kind": "state_match", "key": "breaker", "params": {"value": "trip"}, "priority": 1},
         {"kind": "expression", "key": "", "off_delay_s": 1,
          "params": {"expression": "current_ka > 10 and voltage_v / current_ka > 0.35"}}],
        [(0, "breaker", "closed"), (0, "current_ka", 12.0), (0, "voltage_v", 3.6), (1000, "breaker", "trip"),
         (1000, "voltage_v", 4.5), (2000, "voltage_v", 4.0), (3000, "voltage_v", 4.0), (3000, "breaker", "closed")],
        # 4.5/12 = 0.375 > 0.35 at 1 s; 4.0/12 = 0.333 from 2 s, clear for 1 s at 3 s.
        [[(ALARM, UNACK, 1000), (RTN, RTN_UNACK, 3000)], [(ALARM, UNACK, 1000), (RTN, RTN_UNACK, 3000)]],
    ),
    Scenario(
        "suppressed_by_design_while_the_unit_is_stopped",
        [{"kind": "high", "key": "temp_c", "params": {"limit": 80, "suppress_when": "running == False"}},
         {"kind": "high", "key": "pressure_kpa", "params": {"limit": 10, "suppress_when": "running == False"}}],
        [(0, "running", True), (0, "temp_c", 70.0), (1000, "temp_c", 85.0), (2000, "running", False),
         (3000, "temp_c", 70.0), (3500, "pressure_kpa", 12.0), (4000, "temp_c", 90.0), (5000, "running", True)],
        # The open alarm is suppressed at 2 s; it cleared and sounded again while hidden, so it comes
        # back unacknowledged at 5 s. The second one sounds only while suppressed: on the record,
        # hidden until 5 s.
        [[(ALARM, UNACK, 1000), ("suppress", "suppressed", 2000), ("unsuppress", UNACK, 5000)],
         [("suppress", "suppressed", 3500), ("unsuppress", UNACK, 5000)]],
    ),
    Scenario(
        "stale_data_from_the_ticker",
        [{"kind": "stale", "key": "cl2_ppm", "params": {"seconds": 10}}],
        [(0, "cl2_ppm", 0.4), (15_000, "cl2_ppm", 0.5)],
        [[(ALARM, UNACK, 10_001), (RTN, RTN_UNACK, 15_000)]],
        ticks=[10_000, 10_001],
    ),
]
