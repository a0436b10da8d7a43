"""The ISA-18.2 KPI math alone (no database): rates, floods, chattering, stale, top 10."""

from __future__ import annotations

from ecoplat.alarms.kpis import (
    Annunciation,
    OpenAlarm,
    chattering,
    compute,
    floods,
    rate_series,
    stale_alarms,
)

MIN = 60_000
H = 60 * MIN


def _a(at: int, rule: int = 1, device: int = 1, priority: int = 4) -> Annunciation:
    return Annunciation(at=at, alarm_key=(rule, device), priority=priority, label=f"r{rule}/d{device}")


def test_floods_merge_consecutive_intervals_and_count_time_in_flood() -> None:
    events = [_a(i * 20_000, rule=i) for i in range(11)]  # 11 in the first 10 min
    events += [_a(10 * MIN + i * 1000, rule=100 + i) for i in range(12)]  # 12 in the second
    events += [_a(45 * MIN)]
    series = rate_series(events, 0, H)
    assert [c for _, c in series] == [11, 12, 0, 0, 1, 0]
    assert floods(series) == [{"start": 0, "end": 20 * MIN, "alarms": 23, "peak": 12}]
    k = compute(events, [], start=0, end=H, operators=1)
    assert k["flood_time_pct"] == round(100 * 20 / 60, 3)
    # With three operators the same rate is no flood (more than 10 per operator per 10 min).
    assert compute(events, [], start=0, end=H, operators=3)["floods"] == []


def test_chattering_needs_three_within_sixty_seconds_of_the_same_alarm() -> None:
    events = [_a(0), _a(30_000), _a(59_999), _a(0, rule=2), _a(30_000, rule=2), _a(60_000, rule=2)]
    found = chattering(events)
    assert [(c["rule_id"], c["max_in_60s"]) for c in found] == [(1, 3)]


def test_stale_alarms_are_active_for_more_than_a_day() -> None:
    now = 100 * H
    alarms = [OpenAlarm(1, now - 25 * H, True, "old"), OpenAlarm(2, now - 23 * H, True, "recent"),
              OpenAlarm(3, now - 48 * H, False, "cleared, waiting for ack")]
    assert [(s["alarm_id"], s["active_hours"]) for s in stale_alarms(alarms, now)] == [(1, 25.0)]


def test_top_ten_share_and_priority_distribution() -> None:
    events = [_a(i, rule=1) for i in range(5)] + [_a(100 + i, rule=i + 2, priority=1) for i in range(15)]
    k = compute(events, [], start=0, end=H)
    assert k["top10"][0]["count"] == 5 and len(k["top10"]) == 10
    assert k["top10_share_pct"] == round(100 * 14 / 20, 2)
    assert k["priority_distribution"] == {"urgent": 15, "high": 0, "medium": 0, "low": 5}
    assert k["priority_distribution_pct"]["urgent"] == 75.0
