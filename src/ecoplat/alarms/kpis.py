"""Alarm system performance metrics of ISA-18.2 (clause 16) and EEMUA 191. Pure functions.

An *annunciation* is one time an alarm sounded (Normal → Unacknowledged, or a re-trigger from
Return-to-normal unacknowledged): the unit every rate below counts."""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass

TEN_MINUTES_MS = 600_000
FLOOD_THRESHOLD = 10  # more than 10 alarms in 10 minutes per operator (ISA-18.2 table 5)
CHATTER_COUNT = 3  # the same alarm 3 or more times …
CHATTER_WINDOW_MS = 60_000  # … within 60 seconds
STALE_AFTER_MS = 24 * 3_600_000  # active for more than 24 hours
PRIORITY_NAMES = {1: "urgent", 2: "high", 3: "medium", 4: "low"}


@dataclass(frozen=True, slots=True)
class Annunciation:
    at: int  # ms
    alarm_key: tuple[int | None, int]  # (rule_id, device_id): "the same alarm"
    priority: int
    label: str = ""


@dataclass(frozen=True, slots=True)
class OpenAlarm:
    alarm_id: int
    first_triggered_at: int
    active: bool
    label: str = ""
    priority: int = 3


def rate_series(events: Sequence[Annunciation], start: int, end: int,
                interval_ms: int = TEN_MINUTES_MS) -> list[tuple[int, int]]:
    """Annunciations per interval, as (interval start ms, count), intervals aligned on start."""
    n = max(1, -(-(end - start) // interval_ms))
    counts = [0] * n
    for e in events:
        if start <= e.at < end:
            counts[(e.at - start) // interval_ms] += 1
    return [(start + i * interval_ms, c) for i, c in enumerate(counts)]


def floods(series: Sequence[tuple[int, int]], operators: int = 1,
           interval_ms: int = TEN_MINUTES_MS) -> list[dict[str, int]]:
    """Flood periods: consecutive 10-minute intervals with more than 10 alarms per operator."""
    out: list[dict[str, int]] = []
    limit = FLOOD_THRESHOLD * max(1, operators)
    for t, count in series:
        if count > limit:
            if out and out[-1]["end"] == t:
                out[-1]["end"] = t + interval_ms
                out[-1]["alarms"] += count
                out[-1]["peak"] = max(out[-1]["peak"], count)
            else:
                out.append({"start": t, "end": t + interval_ms, "alarms": count, "peak": count})
    return out


def flood_time_pct(flood_periods: Sequence[dict[str, int]], start: int, end: int) -> float:
    total = max(1, end - start)
    in_flood = sum(min(f["end"], end) - max(f["start"], start) for f in flood_periods)
    return round(100.0 * in_flood / total, 3)


def chattering(events: Sequence[Annunciation]) -> list[dict[str, object]]:
    """Alarms that sounded 3 or more times within 60 s, with the most seen in any such window."""
    by_alarm: dict[tuple[int | None, int], list[Annunciation]] = defaultdict(list)
    for e in events:
        by_alarm[e.alarm_key].append(e)
    out: list[dict[str, object]] = []
    for key, evs in by_alarm.items():
        evs.sort(key=lambda e: e.at)
        window: deque[int] = deque()
        worst = 0
        for e in evs:
            window.append(e.at)
            while window[0] <= e.at - CHATTER_WINDOW_MS:
                window.popleft()
            worst = max(worst, len(window))
        if worst >= CHATTER_COUNT:
            out.append({"rule_id": key[0], "device_id": key[1], "label": evs[-1].label,
                        "max_in_60s": worst, "total": len(evs)})
    out.sort(key=lambda d: (-int(d["max_in_60s"]), -int(d["total"])))  # type: ignore[call-overload]
    return out


def stale_alarms(open_alarms: Sequence[OpenAlarm], at: int) -> list[dict[str, object]]:
    """Alarms still active more than 24 h after they first sounded (standing alarms)."""
    out = [{"alarm_id": a.alarm_id, "label": a.label, "priority": a.priority,
            "active_hours": round((at - a.first_triggered_at) / 3_600_000, 1)}
           for a in open_alarms if a.active and at - a.first_triggered_at > STALE_AFTER_MS]
    out.sort(key=lambda d: -float(d["active_hours"]))  # type: ignore[arg-type]
    return out


def top_frequent(events: Sequence[Annunciation], n: int = 10) -> tuple[list[dict[str, object]], float]:
    """The n most frequent alarms and their share of all annunciations (in %)."""
    counts = Counter(e.alarm_key for e in events)
    labels = {e.alarm_key: e.label for e in events}
    top = counts.most_common(n)
    share = round(100.0 * sum(c for _, c in top) / len(events), 2) if events else 0.0
    return ([{"rule_id": k[0], "device_id": k[1], "label": labels[k], "count": c} for k, c in top], share)


def priority_distribution(events: Sequence[Annunciation]) -> tuple[dict[str, int], dict[str, float]]:
    counts = Counter(e.priority for e in events)
    total = sum(counts.values())
    named = {PRIORITY_NAMES[p]: counts.get(p, 0) for p in sorted(PRIORITY_NAMES)}
    pct = {k: (round(100.0 * v / total, 2) if total else 0.0) for k, v in named.items()}
    return named, pct


def compute(events: Sequence[Annunciation], open_alarms: Sequence[OpenAlarm], *, start: int, end: int,
            operators: int = 1) -> dict[str, object]:
    """Every KPI of the alarm KPIs page for the window [start, end)."""
    operators = max(1, operators)
    inside = [e for e in events if start <= e.at < end]
    series = rate_series(inside, start, end)
    flood_list = floods(series, operators)
    top, share = top_frequent(inside)
    dist, dist_pct = priority_distribution(inside)
    intervals = max(1, len(series))
    return {
        "operators": operators,
        "annunciations": len(inside),
        "alarms_per_operator_per_10min": round(len(inside) / intervals / operators, 3),
        "peak_alarms_per_10min": max((c for _, c in series), default=0),
        "rate_series": [{"start": t, "count": c} for t, c in series],
        "floods": flood_list,
        "flood_time_pct": flood_time_pct(flood_list, start, end),
        "chattering": chattering(inside),
        "stale": stale_alarms(open_alarms, end),
        "top10": top,
        "top10_share_pct": share,
        "priority_distribution": dist,
        "priority_distribution_pct": dist_pct,
    }
