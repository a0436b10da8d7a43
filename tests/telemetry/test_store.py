"""The telemetry store on SQLite and PostgreSQL: exact values, latest, replays, rollups against a
brute-force recompute, retention."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecoplat.telemetry.base import SqlTelemetryStore
from ecoplat.telemetry.points import Frames, Point, Sample
from ecoplat.telemetry.query import HOUR_MS, MINUTE_MS, encode, fold

from .builders import T0, new_device_id, new_enterprise_id, points


def dump(store: SqlTelemetryStore, device_id: int) -> dict[str, list[tuple[Any, ...]]]:
    """Every stored row of the device's series, table by table."""
    out = {}
    for table, ts_col in (("telemetry_raw", "ts"), ("telemetry_agg_1m", "bucket_ts"),
                          ("telemetry_agg_1h", "bucket_ts"), ("telemetry_latest", "ts")):
        out[table] = [tuple(r) for r in store._rows(
            f"SELECT s.key, t.* FROM {table} t JOIN telemetry_series s ON s.id = t.series_id "
            f"WHERE s.device_id = ? ORDER BY s.key, t.{ts_col}", (device_id,))]
    return out


def test_written_values_read_back_exactly_with_their_types(store: SqlTelemetryStore) -> None:
    dev, ent = new_device_id(), new_enterprise_id()
    batch = [Point(dev, "current_ka", T0, 12.5), Point(dev, "current_ka", T0 + 1000, 13),
             Point(dev, "running", T0, True), Point(dev, "mode", T0, "auto"),
             Point(dev, "setpoints", T0, {"hi": 90.5, "lo": 10}),  # type: ignore[arg-type]
             Point(dev, "tiny", T0, 1e-300), Point(dev, "big", T0, 2**52 + 1),
             Point(dev, "u64", T0, 2**64 - 1), Point(dev, "broken", T0, float("nan")),
             Point(dev, "broken", T0 + 1000, float("-inf")), Point(dev, "broken", T0 + 2000, 4.0)]
    store.write(batch, {dev: ent})
    assert store.keys(dev) == ["big", "broken", "current_ka", "mode", "running", "setpoints", "tiny", "u64"]
    # a non-finite number is kept (as text) but stays out of the aggregates
    assert store.range(dev, ["broken", "u64"], T0, T0 + 3000) == {
        "broken": [Sample(T0, "nan"), Sample(T0 + 1000, "-inf"), Sample(T0 + 2000, 4.0)],
        "u64": [Sample(T0, float(2**64 - 1))]}
    [bucket] = store.aggregate(dev, ["broken"], T0, T0 + 60_000, 60_000)["broken"]
    assert (bucket.count, bucket.sum) == (1, 4.0)
    got = store.range(dev, ["current_ka", "running", "mode", "setpoints", "tiny", "big", "absent"],
                      T0, T0 + 2000)
    assert got == {"current_ka": [Sample(T0, 12.5), Sample(T0 + 1000, 13.0)], "running": [Sample(T0, True)],
                   "mode": [Sample(T0, "auto")], "setpoints": [Sample(T0, {"hi": 90.5, "lo": 10})],
                   "tiny": [Sample(T0, 1e-300)], "big": [Sample(T0, float(2**52 + 1))], "absent": []}
    assert store.latest(dev, ["current_ka", "running"]) == {"current_ka": Sample(T0 + 1000, 13.0),
                                                           "running": Sample(T0, True)}
    # end is exclusive, limit counts per key
    assert store.range(dev, ["current_ka"], T0, T0 + 1000)["current_ka"] == [Sample(T0, 12.5)]
    assert store.range(dev, ["current_ka"], T0, T0 + 5000, limit=1)["current_ka"] == [Sample(T0, 12.5)]


def test_every_finite_double_reads_back_bit_for_bit(store: SqlTelemetryStore) -> None:
    # The SQLite writer ships numbers to the database as JSON text: each double must survive
    # the round trip exactly, subnormals and extremes included.
    import random
    import struct

    rng = random.Random(20261127)
    # (-0.0 is left out: SQLite keeps a REAL holding an integral value as an integer, 0.)
    values: list[float] = [5e-324, 2.2250738585072014e-308, 1e300, 0.1, 1 / 3]
    while len(values) < 3000:
        f = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        if abs(f) < 1e300:  # finite, and the bucket sums of 3000 of them stay finite too
            values.append(f)
    dev, ent = new_device_id(), new_enterprise_id()
    store.write([Point(dev, "x", T0 + i, v) for i, v in enumerate(values)], {dev: ent})
    got = [s.value for s in store.range(dev, ["x"], T0, T0 + len(values))["x"]]
    assert [struct.pack("<d", v) for v in got] == [struct.pack("<d", v) for v in values]
    assert store.latest(dev)["x"] == Sample(T0 + len(values) - 1, values[-1])


def test_latest_only_moves_forward_and_an_equal_timestamp_takes_the_last_value(store: SqlTelemetryStore) -> None:
    dev, ent = new_device_id(), new_enterprise_id()
    store.write(points(dev, "level_pct", [(T0 + 2000, 40.0)]), {dev: ent})
    store.write(points(dev, "level_pct", [(T0 + 1000, 10.0)]), {dev: ent})  # late, older point
    assert store.latest(dev) == {"level_pct": Sample(T0 + 2000, 40.0)}
    store.write(points(dev, "level_pct", [(T0 + 2000, 41.0)]), {dev: ent})
    assert store.latest(dev) == {"level_pct": Sample(T0 + 2000, 41.0)}
    # within one batch, the newest point wins whatever its position
    store.write(points(dev, "level_pct", [(T0 + 9000, 90.0), (T0 + 3000, 30.0)]), {dev: ent})
    assert store.latest(dev) == {"level_pct": Sample(T0 + 9000, 90.0)}
    assert [s.ts for s in store.range(dev, ["level_pct"], T0, T0 + 10_000)["level_pct"]] == [
        T0 + 1000, T0 + 2000, T0 + 3000, T0 + 9000]


def test_replaying_a_batch_keeps_the_same_rows_and_aggregates(store: SqlTelemetryStore) -> None:
    dev, ent = new_device_id(), new_enterprise_id()
    batch = [Point(dev, k, T0 + i * 7_000, float(i % 13) * (2 if k == "a" else -1))
             for i in range(600) for k in ("a", "b")] + [Point(dev, "state", T0, "run")]
    store.write(batch, {dev: ent})
    first = dump(store, dev)
    assert len(first["telemetry_raw"]) == 1201
    store.write(batch, {dev: ent})
    store.write(batch[100:300], {dev: ent})
    assert dump(store, dev) == first
    # A replay that changes values keeps one row per (key, ts) with the last value, and the
    # rollups follow it instead of counting both.
    store.write([Point(dev, "a", T0, 1000.0), Point(dev, "a", T0, 500.0)], {dev: ent})
    after = dump(store, dev)
    assert len(after["telemetry_raw"]) == 1201
    assert ("a", after["telemetry_raw"][0][1], T0, 500.0, None) == after["telemetry_raw"][0]
    minute = [r for r in after["telemetry_agg_1m"] if r[0] == "a" and r[2] == T0][0]
    brute = fold([(0, ts, v, None) for key, _sid, ts, v, _s in after["telemetry_raw"]
                  if key == "a" and T0 <= ts < T0 + MINUTE_MS], MINUTE_MS)[(0, T0)]
    assert minute[3:] == (brute[0], brute[1], brute[2], brute[3])


def test_aggregate_over_hours_uses_rollups_and_raw_edges_and_matches_brute_force(store: SqlTelemetryStore) -> None:
    dev, ent = new_device_id(), new_enterprise_id()
    samples = [(T0 + i * 10_000 + 123, (i * 37 % 101) / 3) for i in range(3 * 360)]  # 3 h at 0.1 Hz
    store.write(points(dev, "temp_c", samples), {dev: ent})
    start, end = T0 + 45 * 60_000 + 5_000, T0 + 2 * HOUR_MS + 17 * 60_000 + 1
    for interval in (HOUR_MS, 15 * MINUTE_MS, MINUTE_MS, 45_000, 7 * 60_000):
        got = store.aggregate(dev, ["temp_c"], start, end, interval)["temp_c"]
        expected = fold([(0, ts, v, None) for ts, v in samples if start <= ts < end], interval)
        assert [b.ts for b in got] == sorted(b for _, b in expected)
        for b in got:
            count, total, lo, hi = expected[(0, b.ts)]
            assert (b.count, b.min, b.max) == (count, lo, hi)
            assert math.isclose(b.sum, total) and math.isclose(b.avg, total / count)  # type: ignore[arg-type]


value_st = st.one_of(st.integers(-1000, 1000), st.floats(-1e6, 1e6, allow_nan=False),
                     st.booleans(), st.sampled_from(["open", "closed"]))
batch_st = st.lists(st.tuples(st.sampled_from(["p", "q"]), st.integers(0, 3 * HOUR_MS // 1000), value_st),
                    min_size=1, max_size=60)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(batch_st, min_size=1, max_size=5), replay=st.booleans())
def test_incremental_rollups_equal_a_brute_force_recompute_over_raw(store: SqlTelemetryStore,
                                                                    batches: list, replay: bool) -> None:
    dev, ent = new_device_id(), new_enterprise_id()
    final: dict[tuple[str, int], object] = {}
    for batch in batches + ([batches[0]] if replay else []):
        pts = [Point(dev, k, T0 + s * 1000 + 17, v) for k, s, v in batch]
        store.write(pts, {dev: ent})
        final.update({(p.key, p.ts): p.value for p in pts})
    rows = dump(store, dev)
    assert [(k, ts) for k, _, ts, _, _ in rows["telemetry_raw"]] == sorted(final)
    key_index = {"p": 0, "q": 1}
    raw = [(key_index[k], ts, *encode(v)) for (k, ts), v in final.items()]
    for table, step in (("telemetry_agg_1m", MINUTE_MS), ("telemetry_agg_1h", HOUR_MS)):
        expected = fold(raw, step)
        stored = {(key_index[k], b): (c, s, lo, hi) for k, _, b, c, s, lo, hi in rows[table]}
        assert set(stored) == set(expected), table
        for k, (c, s, lo, hi) in expected.items():
            assert stored[k][0] == c and stored[k][2:] == (lo, hi), table
            assert math.isclose(stored[k][1], s, rel_tol=1e-9, abs_tol=1e-6), table
    latest = store.latest(dev)
    for key in {k for k, _ in final}:
        ts = max(t for k, t in final if k == key)
        value = final[(key, ts)]
        assert latest[key] == Sample(ts, float(value) if type(value) is int else value)


def test_retention_deletes_only_that_enterprises_old_data(store: SqlTelemetryStore) -> None:
    ent_a, ent_b = new_enterprise_id(), new_enterprise_id()
    dev_a, dev_b = new_device_id(), new_device_id()
    old = [(T0 - 40 * 86_400_000 + i * 60_000, float(i)) for i in range(10)]
    recent = [(T0 + i * 60_000, float(i)) for i in range(10)]
    store.write(points(dev_a, "ppm", old + recent), {dev_a: ent_a})
    store.write(points(dev_b, "ppm", old + recent), {dev_b: ent_b})
    cutoff = T0 - 30 * 86_400_000
    assert store.apply_retention(ent_a, cutoff) == 10
    assert [s.ts for s in store.range(dev_a, ["ppm"], 0, T0 + HOUR_MS)["ppm"]] == [ts for ts, _ in recent]
    assert len(store.range(dev_b, ["ppm"], 0, T0 + HOUR_MS)["ppm"]) == 20
    assert store.apply_retention(ent_a, cutoff) == 0
    # minute rollups of the expired range go with the raw rows; hour rollups stay for charts
    assert store.aggregate(dev_a, ["ppm"], 0, cutoff, MINUTE_MS)["ppm"] == []
    assert sum(b.count for b in store.aggregate(dev_a, ["ppm"], 0, cutoff, HOUR_MS)["ppm"]) == 10
    assert store.latest(dev_a)["ppm"] == Sample(recent[-1][0], recent[-1][1])


def test_a_claimed_device_moves_its_series_to_the_new_enterprise(store: SqlTelemetryStore) -> None:
    dev, vendor, plant = new_device_id(), new_enterprise_id(), new_enterprise_id()
    store.write(points(dev, "v", [(T0 - 90 * 86_400_000, 1.0)]), {dev: vendor})
    store.write(points(dev, "v", [(T0, 2.0)]), {dev: plant})
    assert store.apply_retention(vendor, T0) == 0
    assert store.apply_retention(plant, T0) == 1


def test_raw_rows_are_clustered_by_series_and_weekly_partitions_expire_whole(store: SqlTelemetryStore) -> None:
    """SQLite: one WITHOUT ROWID table. PostgreSQL: a partition per week, created as data arrives;
    retention drops a week that only the expiring enterprise used, and deletes row by row in a
    week another enterprise shares."""
    from datetime import UTC, datetime

    week = 7 * 86_400_000
    w1 = int(datetime(2001, 1, 1, tzinfo=UTC).timestamp() * 1000)  # a Monday
    w2 = w1 + week
    ent_a, ent_b = new_enterprise_id(), new_enterprise_id()
    dev_a, dev_b = new_device_id(), new_device_id()
    store.write(points(dev_a, "t", [(w1 + 5, 1.0), (w2 + 5, 2.0)]), {dev_a: ent_a})
    store.write(points(dev_b, "t", [(w2 + 6, 3.0)]), {dev_b: ent_b})
    if hasattr(store, "partitions"):
        names = [name for name, _, _ in store.partitions()]
        assert {"telemetry_raw_w20010101", "telemetry_raw_w20010108"} <= set(names)
    else:
        ddl = store._rows("SELECT sql FROM sqlite_master WHERE name = 'telemetry_raw'", ())[0][0]
        assert "WITHOUT ROWID" in ddl and "PRIMARY KEY (series_id, ts)" in ddl
    assert store.apply_retention(ent_a, w2 + week) == 2
    assert store.range(dev_a, ["t"], 0, w2 + week)["t"] == []
    assert store.range(dev_b, ["t"], 0, w2 + week)["t"] == [Sample(w2 + 6, 3.0)]
    if hasattr(store, "partitions"):
        names = [name for name, _, _ in store.partitions()]
        assert "telemetry_raw_w20010101" not in names and "telemetry_raw_w20010108" in names
        # data arriving for a dropped week gets its partition back
        store.write(points(dev_a, "t", [(w1 + 9, 4.0)]), {dev_a: ent_a})
        assert store.range(dev_a, ["t"], w1, w2)["t"] == [Sample(w1 + 9, 4.0)]


def test_deleting_a_device_removes_its_history_so_a_reused_id_starts_empty(store: SqlTelemetryStore) -> None:
    dev, ent, other_ent = new_device_id(), new_enterprise_id(), new_enterprise_id()
    keep = new_device_id()
    store.write(points(dev, "ppm", [(T0 + i * 1000, float(i)) for i in range(120)]) + [Point(dev, "s", T0, "x")],
                {dev: ent})
    store.write(points(keep, "ppm", [(T0, 1.0)]), {keep: ent})
    assert store.delete_device(dev) == 121
    assert store.keys(dev) == [] and store.latest(dev) == {}
    assert dump(store, dev) == {t: [] for t in ("telemetry_raw", "telemetry_agg_1m", "telemetry_agg_1h",
                                                "telemetry_latest")}
    # the same id, now another enterprise's device, starts from nothing
    store.write(points(dev, "ppm", [(T0 + 5000, 9.0)]), {dev: other_ent})
    assert store.range(dev, ["ppm"], 0, T0 + HOUR_MS) == {"ppm": [Sample(T0 + 5000, 9.0)]}
    [bucket] = store.aggregate(dev, ["ppm"], T0, T0 + MINUTE_MS, MINUTE_MS)["ppm"]
    assert bucket.count == 1
    assert store.latest(keep) == {"ppm": Sample(T0, 1.0)}


frame_value_st = st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.integers(-10**6, 10**6), st.booleans(),
                           st.sampled_from(["open", "closed", float("nan"), float("inf")]))
frames_st = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2 * HOUR_MS // 1000),
                               st.dictionaries(st.sampled_from(["p", "q", "r"]), frame_value_st, min_size=1)),
                     min_size=1, max_size=40)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=frames_st)
def test_frames_are_stored_exactly_as_the_same_points_one_by_one(store: SqlTelemetryStore, frames: list) -> None:
    """Gateway batches travel as frames (a device's values at one instant); what the store keeps
    of them must be what it keeps of the same points written as Points."""
    ent = new_enterprise_id()
    as_frames, as_points = [new_device_id() for _ in range(3)], [new_device_id() for _ in range(3)]
    store.write(Frames([(as_frames[d], T0 + s * 1000, values) for d, s, values in frames]),
                {d: ent for d in as_frames})
    store.write([Point(as_points[d], k, T0 + s * 1000, v) for d, s, values in frames for k, v in values.items()],
                {d: ent for d in as_points})
    for a, b in zip(as_frames, as_points, strict=True):
        got, want = dump(store, a), dump(store, b)
        for table in want:
            # Series ids differ between the two devices; everything else must match, sums up to
            # rounding (frames are summed per group, then the groups added).
            assert len(got[table]) == len(want[table]), table
            for g, w in zip(got[table], want[table], strict=True):
                assert (g[0], len(g)) == (w[0], len(w)), table
                for x, y in zip(g[2:], w[2:], strict=True):
                    assert x == y or (type(x) is float and math.isclose(x, y, rel_tol=1e-12)), (table, g, w)
        assert store.latest(a) == store.latest(b)
