"""The rule engine alone: every rule kind with deadband and delays, exact timestamps."""

from __future__ import annotations

import pytest

from ecoplat.alarms.engine import (
    DeviceInfo,
    RuleEngine,
    RuleError,
    RuleSpec,
    compile_expression,
    compile_rule,
)
from ecoplat.telemetry.points import Frames, Point

DEV = DeviceInfo(id=7, enterprise_id=1, profile_id=3, name="E-101")


def engine_with(**kw: object) -> RuleEngine:
    spec = RuleSpec(**{"id": 1, "enterprise_id": 1, "device_id": 7, "priority": 2, **kw})  # type: ignore[arg-type]
    return RuleEngine([spec], device_resolver=lambda i: DEV if i == 7 else None)


def run(engine: RuleEngine, key: str, samples: list[tuple[int, object]]) -> list[tuple[bool, int]]:
    out = []
    for ts, v in samples:
        out += [(c.active, c.at) for c in engine.evaluate([Point(7, key, ts, v)])]  # type: ignore[arg-type]
    return out


def test_high_limit_activates_above_and_clears_below_limit_minus_deadband() -> None:
    e = engine_with(kind="high", key="t", params={"limit": 80}, deadband=2)
    seq = [(1000, 79), (2000, 81), (3000, 79), (4000, 78.5), (5000, 77.9), (6000, 80.5)]
    assert run(e, "t", seq) == [(True, 2000), (False, 5000), (True, 6000)]


def test_high_high_and_low_low_limits() -> None:
    e = engine_with(kind="high_high", key="p", params={"limit": 10})
    assert run(e, "p", [(0, 10), (1, 10.01), (2, 9.99)]) == [(True, 1), (False, 2)]
    e = engine_with(kind="low_low", key="p", params={"limit": 1}, deadband=0.5)
    assert run(e, "p", [(0, 1), (1, 0.9), (2, 1.4), (3, 1.51)]) == [(True, 1), (False, 3)]


def test_low_limit_with_on_delay_activates_only_after_holding() -> None:
    e = engine_with(kind="low", key="lvl", params={"limit": 20}, on_delay_s=5)
    # Dips shorter than 5 s never sound; the one that holds sounds at the first point 5 s in.
    seq = [(0, 19), (3000, 21), (10_000, 18), (14_000, 18), (15_000, 17), (16_000, 25)]
    assert run(e, "lvl", seq) == [(True, 15_000), (False, 16_000)]


def test_off_delay_keeps_alarm_until_clear_for_the_whole_delay() -> None:
    e = engine_with(kind="high", key="t", params={"limit": 80}, off_delay_s=10)
    seq = [(0, 90), (1000, 70), (5000, 85), (6000, 70), (15_000, 70), (16_000, 70)]
    assert run(e, "t", seq) == [(True, 0), (False, 16_000)]


def test_delays_expire_on_tick_when_device_is_silent() -> None:
    e = engine_with(kind="high", key="t", params={"limit": 80}, on_delay_s=5, off_delay_s=3)
    assert run(e, "t", [(0, 90)]) == []
    assert e.tick(4999) == []
    assert [(c.active, c.at) for c in e.tick(5000)] == [(True, 5000)]
    assert run(e, "t", [(6000, 10)]) == []
    assert [(c.active, c.at) for c in e.tick(9000)] == [(False, 9000)]


def test_rate_of_change_per_minute_over_window() -> None:
    e = engine_with(kind="rate_of_change", key="t", params={"limit": 6, "per": "minute", "window_s": 30})
    # 0.1 /s = 6 /min is not above the limit; 0.2 /s = 12 /min is.
    seq = [(0, 0.0), (10_000, 1.0), (20_000, 2.0), (30_000, 3.0), (40_000, 5.0), (50_000, 7.0),
           (60_000, 9.0), (70_000, 9.0), (80_000, 9.0), (90_000, 9.0)]
    got = run(e, "t", seq)
    # At 80 s the window [50 s, 80 s] rose by 2 in 30 s = 4 /min: clear.
    assert got == [(True, 40_000), (False, 80_000)]


def test_rate_of_change_direction_fall_ignores_rise() -> None:
    e = engine_with(kind="rate_of_change", key="p", params={"limit": 1, "per": "second", "window_s": 1,
                                                           "direction": "fall"})
    assert run(e, "p", [(0, 0), (1000, 5), (2000, 10), (3000, 7), (4000, 7)]) == [(True, 3000), (False, 4000)]


def test_deviation_from_setpoint_with_deadband() -> None:
    e = engine_with(kind="deviation", key="t", params={"setpoint": 50, "limit": 5}, deadband=1)
    seq = [(0, 54), (1, 56), (2, 45.5), (3, 46.1), (4, 44)]
    # 56 deviates by 6 (>5); 45.5 still deviates by 4.5 (>= 5-1); 46.1 deviates by 3.9: clear.
    assert run(e, "t", seq) == [(True, 1), (False, 3), (True, 4)]


def test_deviation_from_another_key_of_the_same_device() -> None:
    e = engine_with(kind="deviation", key="pv", params={"reference_key": "sp", "limit": 2})
    pts = [Point(7, "sp", 0, 10), Point(7, "pv", 0, 11), Point(7, "pv", 1000, 12.5),
           Point(7, "sp", 2000, 12), Point(7, "sp", 3000, 9)]
    changes = e.evaluate(pts)
    assert [(c.active, c.at, c.value) for c in changes] == [(True, 1000, 2.5), (False, 2000, 0.5),
                                                            (True, 3000, 3.5)]


def test_stale_data_is_found_by_tick_and_cleared_by_next_value() -> None:
    e = engine_with(kind="stale", key="t", params={"seconds": 30})
    assert e.tick(1_000_000) == []  # never seen: nothing to be stale about
    assert run(e, "t", [(0, 1.0)]) == []
    assert e.tick(30_000) == []
    assert [(c.active, c.at) for c in e.tick(30_001)] == [(True, 30_001)]
    assert e.tick(40_000) == []
    assert run(e, "t", [(41_000, 2.0)]) == [(False, 41_000)]


def test_a_clock_behind_the_last_point_neither_raises_nor_clears_stale_data() -> None:
    """The ticker runs on the platform's clock; a device whose clock is ahead sends points
    stamped later than that. A tick before the last point says nothing about silence."""
    e = engine_with(kind="stale", key="t", params={"seconds": 30})
    assert run(e, "t", [(100_000, 1.0)]) == []
    assert [(c.active, c.at) for c in e.tick(130_001)] == [(True, 130_001)]
    assert run(e, "t", [(200_000, 2.0)]) == [(False, 200_000)]
    assert [(c.active, c.at) for c in e.tick(230_001)] == [(True, 230_001)]
    assert e.tick(150_000) == []  # a clock behind the last point: the alarm stands
    assert run(e, "t", [(231_000, 3.0)]) == [(False, 231_000)]


def test_state_match_does_not_confuse_true_with_one() -> None:
    e = engine_with(kind="state_match", key="run", params={"value": True})
    assert run(e, "run", [(0, 1), (1, True), (2, True), (3, False)]) == [(True, 1), (False, 3)]
    e = engine_with(kind="state_match", key="mode", params={"values": ["trip", "fault"]})
    assert run(e, "mode", [(0, "auto"), (1, "fault"), (2, "trip"), (3, "auto")]) == [(True, 1), (False, 3)]


def test_expression_over_several_keys_waits_for_all_of_them() -> None:
    e = engine_with(kind="expression", key="", params={"expression": "t > 80 and abs(p - 2) > 0.5"},
                    message_template="{device}: hot and pressure off ({value})")
    pts = [Point(7, "t", 0, 90), Point(7, "p", 1, 3.0), Point(7, "t", 2, 70), Point(7, "p", 3, 2.1)]
    changes = e.evaluate(pts)
    assert [(c.active, c.at) for c in changes] == [(True, 1), (False, 2)]
    assert changes[0].message == "E-101: hot and pressure off (3.0)"


def test_message_template_fills_placeholders_and_survives_bad_format_spec() -> None:
    e = engine_with(kind="high", key="t", params={"limit": 80, "unit": "Cel"},
                    message_template="{device} {key} {value:.1f} > {limit} {unit}")
    (c,) = e.evaluate([Point(7, "t", 0, 91.26)])
    assert c.message == "E-101 t 91.3 > 80.0 Cel"
    assert c.priority == 2 and c.enterprise_id == 1


@pytest.mark.parametrize("source, words", [
    ("t.__class__", "attribute"),
    ("__import__('os')", "_"),
    ("(lambda: 1)()", "lambda"),
    ("[x for x in t]", "comprehension"),
    ("open('/etc/passwd')", "open"),
    ("t[0]", "indexing"),
    ("import os", "not valid"),
    ("t > 1 " + "and t > 1 " * 80, "characters"),
    ("", "empty"),
    ("1 + 2", "no telemetry key"),
])
def test_expression_rejects_unsafe_input_with_a_clear_message(source: str, words: str) -> None:
    with pytest.raises(RuleError) as info:
        compile_expression(source)
    assert words in str(info.value)


def test_rule_validation_messages() -> None:
    with pytest.raises(RuleError, match="priority"):
        compile_rule(RuleSpec(id=1, enterprise_id=1, device_id=1, kind="high", key="t", params={"limit": 1},
                              priority=5))
    with pytest.raises(RuleError, match="limit is required"):
        compile_rule(RuleSpec(id=1, enterprise_id=1, device_id=1, kind="high", key="t"))
    with pytest.raises(RuleError, match="placeholder"):
        compile_rule(RuleSpec(id=1, enterprise_id=1, device_id=1, kind="high", key="t", params={"limit": 1},
                              message_template="{device.__class__}"))
    with pytest.raises(RuleError, match="exactly one"):
        compile_rule(RuleSpec(id=1, enterprise_id=1, kind="high", key="t", params={"limit": 1}))


def test_profile_rule_applies_to_every_device_of_the_profile_and_only_in_its_enterprise() -> None:
    devices = {1: DeviceInfo(1, 1, 3, "a"), 2: DeviceInfo(2, 1, 3, "b"), 3: DeviceInfo(3, 1, 4, "c"),
               4: DeviceInfo(4, 2, 3, "other tenant")}
    e = RuleEngine([RuleSpec(id=9, enterprise_id=1, profile_id=3, kind="high", key="t", params={"limit": 0})],
                   device_resolver=devices.get)
    changes = e.evaluate([Point(d, "t", 5, 1) for d in (1, 2, 3, 4)])
    assert sorted(c.device_id for c in changes) == [1, 2]


def test_rule_update_recompiles_only_that_rule() -> None:
    e = engine_with(kind="high", key="t", params={"limit": 80})
    assert run(e, "t", [(0, 85)]) == [(True, 0)]
    e.upsert_rule(RuleSpec(id=1, enterprise_id=1, device_id=7, kind="high", key="t", params={"limit": 90}))
    # The edited rule keeps the active condition: 85 is under the new limit, so it clears.
    assert run(e, "t", [(1, 85), (2, 91)]) == [(False, 1), (True, 2)]
    e.remove_rule(1)
    assert run(e, "t", [(3, 95)]) == [] and e.binding_count == 0


def test_forgetting_a_device_keeps_its_active_conditions() -> None:
    e = engine_with(kind="high", key="t", params={"limit": 80})
    assert run(e, "t", [(0, 85)]) == [(True, 0)]
    e.forget_device(7)  # e.g. the device was re-credentialed; it is looked up again
    assert run(e, "t", [(1, 86), (2, 70)]) == [(False, 2)]


def test_suppress_when_is_checked_like_an_expression() -> None:
    with pytest.raises(RuleError) as info:
        compile_rule(RuleSpec(id=1, enterprise_id=1, device_id=1, kind="high", key="t",
                              params={"limit": 1, "suppress_when": "running.__class__"}))
    assert info.value.field == "params.suppress_when" and "attribute access" in str(info.value)


def test_suppression_by_design_follows_the_plant_state() -> None:
    e = engine_with(kind="high", key="t", params={"limit": 80, "suppress_when": "not running"})
    pts = [Point(7, "running", 0, True), Point(7, "t", 0, 85.0), Point(7, "running", 1, False),
           Point(7, "t", 2, 70.0), Point(7, "running", 3, True)]
    got = [(c.active, c.at, c.suppression, c.suppressed) for c in e.evaluate(pts)]
    assert got == [(True, 0, None, False), (True, 1, True, True), (False, 2, None, True), (False, 3, False, False)]


def test_a_gateway_batch_of_frames_raises_what_the_same_points_raise() -> None:
    """Gateway telemetry reaches the engine as frames, mostly of devices without rules; the
    alarms must be exactly those of the same values as Points."""
    def frames(step: int) -> list[tuple[int, int, dict[str, object]]]:
        return [(dev, 1000 * step, {"t": 70 + 5 * step + dev, "p": 1.0}) for dev in (5, 6, 7, 8)]

    as_frames, as_points = engine_with(kind="high", key="t", params={"limit": 80}), \
        engine_with(kind="high", key="t", params={"limit": 80})
    got, want = [], []
    for step in range(4):
        got += [(c.device_id, c.active, c.at) for c in as_frames.evaluate(Frames(frames(step)))]
        want += [(c.device_id, c.active, c.at) for c in as_points.evaluate(
            [Point(d, k, ts, v) for d, ts, values in frames(step) for k, v in values.items()])]  # type: ignore[arg-type]
    assert got == want == [(7, True, 1000)]


class _Boxed(float):
    """A float the engine cannot take for a plain float: every check runs, no quiet band."""


def _changes(out: list) -> list[tuple[int, bool, int, float | None]]:  # type: ignore[type-arg]
    return [(c.rule_id, c.active, c.at, None if c.value is None else float(c.value)) for c in out]


@pytest.mark.parametrize("seed", range(6))
def test_values_in_the_quiet_band_skip_the_checks_and_change_nothing_they_would_have(seed: int) -> None:
    """Limits skip values that leave every rule of their key as it is (RuleEngine's quiet band),
    and an expression of comparisons with numbers is not evaluated while its keys stay where
    its result cannot change (RuleEngine._expression_band).
    Whatever happens meanwhile (delays running and expiring on ticks, an alarm restored after a
    restart, a rule edited), the alarms are exactly those of the same values checked one by one."""
    import random

    rnd = random.Random(seed)
    specs = [
        RuleSpec(id=1, enterprise_id=1, device_id=7, kind="high", key="t", params={"limit": 80.0}, deadband=2.0,
                 on_delay_s=rnd.choice([0.0, 3.0]), off_delay_s=rnd.choice([0.0, 2.0])),
        RuleSpec(id=2, enterprise_id=1, device_id=7, kind="high_high", key="t", params={"limit": 90.0}),
        RuleSpec(id=3, enterprise_id=1, device_id=7, kind="low", key="t", params={"limit": 20.0}, deadband=1.0),
        RuleSpec(id=4, enterprise_id=1, device_id=7, kind="deviation", key="p", params={"setpoint": 5.0, "limit": 0.5},
                 deadband=0.1, off_delay_s=rnd.choice([0.0, 1.0])),
        RuleSpec(id=5, enterprise_id=1, device_id=7, kind="low_low", key="p", params={"limit": 4.0}),
        # Rules over several keys read values that the limits above skip, and keep them current.
        RuleSpec(id=6, enterprise_id=1, device_id=7, kind="expression", key="t",
                 params={"expression": "t > 60 and p > 5.2"}, on_delay_s=rnd.choice([0.0, 1.0])),
        RuleSpec(id=7, enterprise_id=1, device_id=7, kind="deviation", key="q", params={"reference_key": "t", "limit": 8.0},
                 deadband=1.0),
        RuleSpec(id=8, enterprise_id=1, device_id=7, kind="high", key="q", params={"limit": 85.0}),
    ]
    banded, checked = (RuleEngine(specs, device_resolver=lambda i: DEV if i == 7 else None) for _ in range(2))
    t, p = 50.0, 5.0
    for step in range(3000):
        ts = step * 500
        t = min(100.0, max(0.0, t + rnd.gauss(0, 4)))
        p = min(7.0, max(3.0, p + rnd.gauss(0, 0.15)))
        if rnd.random() < 0.05:
            p = 5.0 + 0.5  # exactly on the deviation limit: inside, by the check's own arithmetic
        if rnd.random() < 0.05:
            p = 5.2  # exactly on the expression's threshold (the expression's band is exact too)
        values = {"t": round(t, rnd.choice([0, 1, 3])), "p": p, "q": t + rnd.gauss(0, 5)}
        if rnd.random() < 0.03:
            values["t"] = 60.0
        if rnd.random() < 0.2:  # not every key at every instant
            del values[rnd.choice(["t", "p", "q"])]
        got = banded.evaluate(Frames([(7, ts, values)]))
        want = checked.evaluate(Frames([(7, ts, {k: _Boxed(v) for k, v in values.items()})]))
        if rnd.random() < 0.1:
            got += banded.tick(ts + 250)
            want += checked.tick(ts + 250)
        if rnd.random() < 0.005:  # a restarted platform restores an alarm the database holds open
            for e in (banded, checked):
                e.restore_active(1, 7)
                e.restore_active(6, 7)
        if rnd.random() < 0.005:  # an engineer moves the limit
            edited = RuleSpec(id=3, enterprise_id=1, device_id=7, kind="low", key="t",
                              params={"limit": rnd.choice([20.0, 30.0])}, deadband=1.0)
            for e in (banded, checked):
                e.upsert_rule(edited)
        assert _changes(got) == _changes(want), f"step {step}: {values}"
