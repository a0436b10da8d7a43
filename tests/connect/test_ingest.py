"""The ingest pipeline on a real database and the real telemetry store: durability before
submit returns, status counters, listeners and events, backpressure, rejects, token cache,
gateway children and RPC."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence

import pytest
from sqlalchemy import func, select, update
from tests.connect.conftest import seed

from ecoplat.connect.ingest import ERROR_LOG_PER_DEVICE, IngestPipeline, IngestStopped, hash_token
from ecoplat.connect.models import Device, DeviceErrorLog, DeviceProfile, DeviceReject
from ecoplat.db import Database
from ecoplat.events import EventBus
from ecoplat.telemetry.points import Point


def test_points_are_durable_when_submit_returns(pipeline: IngestPipeline, real_db: Database, store):
    tenant = seed(real_db, "E-101", "E-102")
    (d1, _), (d2, _) = tenant.devices["E-101"], tenant.devices["E-102"]
    heard: list[list[Point]] = []
    pipeline.add_listener(lambda pts: heard.append(list(pts)))
    events = []
    pipeline.events.add_listener("telemetry.", lambda e: events.append((e.topic, e.data)))
    points = [Point(d1, "current_ka", 1_000 + i, 14.0 + i / 10) for i in range(5)] + [Point(d2, "level_pct", 2_000, 55)]

    async def go() -> None:
        await pipeline.submit(points[:5], enterprise_id=tenant.enterprise_id)
        # durable now: readable from the store before anything else happens
        assert [s.value for s in store.range(d1, ["current_ka"], 0, 10_000)["current_ka"]] == [14.0, 14.1, 14.2, 14.3, 14.4]
        await pipeline.submit(points[5:], enterprise_id=tenant.enterprise_id)

    asyncio.run(go())
    assert store.latest(d2)["level_pct"].value == 55
    # listeners and events run right after the submitters are released, in the writer thread
    deadline = time.monotonic() + 5
    while (len([p for batch in heard for p in batch]) < len(points) or len(events) < 6) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [p for batch in heard for p in batch] == points
    assert (f"telemetry.{tenant.enterprise_id}.{d2}", {"device_id": d2, "ts": 2000, "values": {"level_pct": 55}}) in events
    assert len([e for e in events if e[0].endswith(f".{d1}")]) == 5
    with real_db.session() as s:
        dev = s.get(Device, d1)
        assert (dev.messages_total, dev.points_total, dev.last_activity) == (1, 5, "telemetry")
        assert dev.last_seen_at is not None


class SlowStore:
    """The real store, made slow, recording how many points were queued at each write."""

    def __init__(self, inner, pipeline_ref: list[IngestPipeline], delay_s: float) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.pipeline_ref, self.delay_s = inner, pipeline_ref, delay_s
        self.queued_at_write: list[int] = []

    def write(self, points: Sequence[Point], enterprise_of: Mapping[int, int]) -> None:
        self.queued_at_write.append(self.pipeline_ref[0].queued_points)
        time.sleep(self.delay_s)
        self.inner.write(points, enterprise_of)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)


def test_backpressure_blocks_submitters_bounds_memory_and_loses_nothing(real_db: Database, store):
    tenant = seed(real_db, "cell-1")
    device_id = tenant.devices["cell-1"][0]
    ref: list[IngestPipeline] = []
    slow = SlowStore(store, ref, delay_s=0.05)
    pipeline = IngestPipeline(database=real_db, store=slow, events=EventBus(), batch_max_points=5,
                              batch_max_ms=5, queue_max_points=10)
    ref.append(pipeline)
    pipeline.start()
    peak = 0

    async def go() -> float:
        nonlocal peak
        done = asyncio.Event()

        async def watch() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, pipeline.queued_points)
                await asyncio.sleep(0.002)

        watcher = asyncio.create_task(watch())
        started = time.perf_counter()
        await asyncio.gather(*(pipeline.submit([Point(device_id, "v", m * 5 + i, m * 5 + i) for i in range(5)],
                                               enterprise_id=tenant.enterprise_id) for m in range(20)))
        done.set()
        await watcher
        return time.perf_counter() - started

    try:
        elapsed = asyncio.run(go())
    finally:
        pipeline.stop()
    # 100 points, at most 5 per batch and 50 ms a batch: submitters had to wait for the writer
    assert elapsed >= 19 * 0.05
    assert peak <= 10 and max(slow.queued_at_write) <= 10
    values = [s.value for s in store.range(device_id, ["v"], 0, 1000)["v"]]
    assert values == list(range(100))
    with real_db.session() as s:  # status counters written in few updates under load, none lost
        dev = s.get(Device, device_id)
        assert (dev.messages_total, dev.points_total) == (20, 100)


def test_status_counters_under_a_steady_stream_are_written_twice_a_second_and_at_once_when_it_stops(
        pipeline: IngestPipeline, real_db: Database) -> None:
    """A device sending steadily (the queue running empty between its messages) must not cost an
    UPDATE of the devices table per batch, and its page is current a moment after it stops."""
    tenant = seed(real_db, "E-101")
    device_id = tenant.devices["E-101"][0]
    writes: list[int] = []
    execute = pipeline._execute_status

    def counted(rows):  # type: ignore[no-untyped-def]
        writes.append(len(rows))
        execute(rows)

    pipeline._execute_status = counted  # type: ignore[method-assign]

    async def stream() -> int:
        n, started = 0, time.monotonic()
        while time.monotonic() - started < 1.2:
            await pipeline.submit([Point(device_id, "v", 10_000 + n, float(n))], enterprise_id=tenant.enterprise_id)
            n += 1
            await asyncio.sleep(0.01)
        return n

    sent = asyncio.run(stream())
    stopped = time.monotonic()
    while time.monotonic() - stopped < 2:
        with real_db.session() as s:
            if s.get(Device, device_id).messages_total == sent:
                break
        time.sleep(0.01)
    caught_up = time.monotonic() - stopped
    assert sent >= 20
    with real_db.session() as s:
        dev = s.get(Device, device_id)
        assert (dev.messages_total, dev.points_total) == (sent, sent)
    assert caught_up < 0.5
    assert 2 <= len(writes) <= 5, writes  # the first batch, every 0.5 s, and once idle


class GatedStore:
    """The real store, whose writes wait until the test opens the gate."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.gate, self.writing = inner, threading.Event(), threading.Event()

    def write(self, points: Sequence[Point], enterprise_of: Mapping[int, int]) -> None:
        self.writing.set()
        assert self.gate.wait(10)
        self.inner.write(points, enterprise_of)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)


def test_receivers_see_points_in_queue_order_before_they_are_durable(real_db: Database, store):
    # The alarm engine is a receiver: an alarm must not wait for the telemetry write.
    tenant = seed(real_db, "cell-1", "cell-2")
    d1, d2 = tenant.devices["cell-1"][0], tenant.devices["cell-2"][0]
    gated = GatedStore(store)
    pipeline = IngestPipeline(database=real_db, store=gated, events=EventBus(), batch_max_ms=1)
    received: list[Point] = []
    durable: list[Point] = []
    pipeline.add_receiver(lambda pts: received.extend(pts))
    pipeline.add_listener(lambda pts: durable.extend(pts))
    pipeline.start()
    first = [Point(d1, "v", 1, 1.0), Point(d2, "v", 1, 2.0)]
    second = [Point(d1, "v", 2, 3.0)]
    senders = [threading.Thread(target=pipeline.submit_blocking, args=(batch,),
                                kwargs={"enterprise_id": tenant.enterprise_id}) for batch in (first, second)]
    try:
        senders[0].start()
        assert gated.writing.wait(5)
        senders[1].start()
        deadline = time.monotonic() + 5
        while len(received) < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        # both submissions reached the receiver while the first write was still held
        assert received == first + second
        assert durable == [] and store.range(d1, ["v"], 0, 10)["v"] == []
        gated.gate.set()
        for sender in senders:
            sender.join(10)
    finally:
        gated.gate.set()
        pipeline.stop()
    assert sorted(durable) == sorted(first + second)
    assert [s.value for s in store.range(d1, ["v"], 0, 10)["v"]] == [1.0, 3.0]


class FailingOnceStore:
    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.failed = inner, False

    def write(self, points: Sequence[Point], enterprise_of: Mapping[int, int]) -> None:
        if not self.failed:
            self.failed = True
            raise OSError("disk full")
        self.inner.write(points, enterprise_of)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)


def test_a_failed_write_errors_its_submitters_and_the_pipeline_keeps_going(real_db: Database, store):
    tenant = seed(real_db, "cell-1")
    device_id = tenant.devices["cell-1"][0]
    pipeline = IngestPipeline(database=real_db, store=FailingOnceStore(store), events=EventBus(), batch_max_ms=1)
    pipeline.start()

    async def go() -> None:
        with pytest.raises(OSError):
            await pipeline.submit([Point(device_id, "v", 1, 1.0)], enterprise_id=tenant.enterprise_id)
        await pipeline.submit([Point(device_id, "v", 2, 2.0)], enterprise_id=tenant.enterprise_id)

    try:
        asyncio.run(go())
        pipeline.submit_blocking([Point(device_id, "v", 3, 3.0)], enterprise_id=tenant.enterprise_id)
    finally:
        pipeline.stop()
    assert [s.value for s in store.range(device_id, ["v"], 0, 10)["v"]] == [2.0, 3.0]
    assert pipeline.stats.write_failures == 1 and pipeline.queued_points == 0
    with pytest.raises(IngestStopped):  # after stop: a clear error, not a hang
        asyncio.run(pipeline.submit([Point(device_id, "v", 4, 4.0)], enterprise_id=tenant.enterprise_id))


def test_rejects_are_counted_per_device_and_reason_and_the_log_is_bounded(pipeline: IngestPipeline, real_db: Database):
    tenant = seed(real_db, "cl2-1")
    device_id = tenant.devices["cl2-1"][0]
    for i in range(3):
        pipeline.reject(device_id, "bad_ts", f"ts {i} is negative")
    pipeline.reject(device_id, "non_finite", "temperature: nan")
    pipeline.reject(None, "unknown_token", "token abcd…")
    pipeline.flush_rejects()
    for i in range(ERROR_LOG_PER_DEVICE + 10):
        pipeline.reject(device_id, "malformed_json", f"bad {i}")
    pipeline.flush_rejects()
    with real_db.session() as s:
        counts = {(r.device_id, r.reason): (r.count, r.last_detail) for r in s.scalars(select(DeviceReject))}
        assert counts[(device_id, "bad_ts")] == (3, "ts 2 is negative")
        assert counts[(device_id, "non_finite")] == (1, "temperature: nan")
        assert counts[(device_id, "malformed_json")] == (ERROR_LOG_PER_DEVICE + 10, f"bad {ERROR_LOG_PER_DEVICE + 9}")
        assert counts[(None, "unknown_token")][0] == 1
        assert s.get(Device, device_id).errors_total == 4 + ERROR_LOG_PER_DEVICE + 10
        logged = s.scalar(select(func.count()).select_from(DeviceErrorLog).where(DeviceErrorLog.device_id == device_id))
        assert logged == ERROR_LOG_PER_DEVICE


def test_token_cache_follows_rotation_and_revocation(pipeline: IngestPipeline, real_db: Database):
    tenant = seed(real_db, "pump-1", gateways=("gw-1",))
    device_id, token = tenant.devices["pump-1"]
    ref = pipeline.resolve_token(token)
    assert ref is not None and (ref.device_id, ref.enterprise_id, ref.revoked) == (device_id, tenant.enterprise_id, False)
    assert pipeline.resolve_token(tenant.devices["gw-1"][1]).is_gateway is True
    assert pipeline.resolve_token("no-such-token") is None
    with real_db.session() as s:
        s.execute(update(Device).where(Device.id == device_id).values(token_revoked=True))
    assert pipeline.resolve_token(token).revoked is False  # cached until told
    pipeline.invalidate_device(device_id)
    assert pipeline.resolve_token(token).revoked is True
    with real_db.session() as s:
        s.execute(update(Device).where(Device.id == device_id).values(token_hash=hash_token("rotated-token-xyz")))
    pipeline.events.publish(f"credentials.{tenant.enterprise_id}.{device_id}", {"device_id": device_id})
    assert pipeline.resolve_token(token) is None
    assert pipeline.resolve_token("rotated-token-xyz").device_id == device_id


def test_gateway_children_are_created_once_under_the_gateways_enterprise(pipeline: IngestPipeline, real_db: Database):
    tenant = seed(real_db, gateways=("gw-1",))
    gw = pipeline.resolve_token(tenant.devices["gw-1"][1])
    child = pipeline.ensure_child_device(gw, "Electrolyzer A", "membrane_electrolyzer")
    assert pipeline.ensure_child_device(gw, "Electrolyzer A").device_id == child.device_id
    pipeline._children.clear()  # a restart: found again in the database, not created twice
    assert pipeline.ensure_child_device(gw, "Electrolyzer A").device_id == child.device_id
    with real_db.session() as s:
        rows = s.scalars(select(Device).where(Device.name == "Electrolyzer A")).all()
        assert [(d.enterprise_id, d.gateway_id, d.type, d.token_hash) for d in rows] == [
            (tenant.enterprise_id, gw.device_id, "membrane_electrolyzer", None)]


def test_rpc_round_trip_and_timeout(pipeline: IngestPipeline, real_db: Database):
    tenant = seed(real_db, "valve-1")
    device_id = tenant.devices["valve-1"][0]

    def device_side(event) -> None:  # type: ignore[no-untyped-def]
        # answers from another thread, as the MQTT transport does
        if event.data["method"] == "getValve":
            threading.Timer(0.05, pipeline.rpc_response,
                            args=(device_id, event.data["id"], {"open": True})).start()

    pipeline.events.add_listener(f"rpc.{tenant.enterprise_id}.{device_id}", device_side)

    async def go() -> None:
        answer = await pipeline.call_rpc(enterprise_id=tenant.enterprise_id, device_id=device_id,
                                         method="getValve", params={}, timeout_s=2)
        assert answer == {"open": True}
        with pytest.raises(TimeoutError):
            await pipeline.call_rpc(enterprise_id=tenant.enterprise_id, device_id=device_id,
                                    method="noAnswer", params={}, timeout_s=0.2)

    asyncio.run(go())
    assert pipeline.rpc_response(device_id, 999, "late") is False


def test_devices_are_announced_online_and_offline_after_their_profiles_timeout(pipeline: IngestPipeline,
                                                                              real_db: Database):
    tenant = seed(real_db, "cl2-1", "tank-1")
    cl2, tank = tenant.devices["cl2-1"][0], tenant.devices["tank-1"][0]
    with real_db.session() as s:
        profile = DeviceProfile(enterprise_id=tenant.enterprise_id, name="fast detector", inactivity_timeout_s=1)
        s.add(profile)
        s.flush()
        s.execute(update(Device).where(Device.id == cl2).values(profile_id=profile.id))
    statuses = []
    pipeline.events.add_listener("device.", lambda e: statuses.append((e.topic, e.data["status"])))

    async def go() -> None:
        await pipeline.submit([Point(cl2, "cl2_ppm", 1, 0.1), Point(tank, "level_pct", 1, 50)],
                              enterprise_id=tenant.enterprise_id)
        await pipeline.submit([Point(cl2, "cl2_ppm", 2, 0.2)], enterprise_id=tenant.enterprise_id)

    asyncio.run(go())
    ent = tenant.enterprise_id
    deadline = time.monotonic() + 5  # announced by the writer just after the submitters are released
    while len(statuses) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(statuses) == [(f"device.{ent}.{cl2}", "online"), (f"device.{ent}.{tank}", "online")]
    time.sleep(1.3)
    assert pipeline.sweep_presence() == [cl2]  # the tank's profile-less default is 10 minutes
    assert statuses[-1] == (f"device.{ent}.{cl2}", "offline")


def test_backpressure_wakes_submitters_on_every_event_loop(real_db: Database, store):
    """Transports may run their own event loop (a bridge thread) beside the app's: waiting
    submitters of both are woken when room frees up, and nothing is lost."""
    tenant = seed(real_db, "cell-a", "cell-b")
    ref: list[IngestPipeline] = []
    pipeline = IngestPipeline(database=real_db, store=SlowStore(store, ref, delay_s=0.01), events=EventBus(),
                              batch_max_points=4, batch_max_ms=2, queue_max_points=8)
    ref.append(pipeline)
    pipeline.start()
    errors: list[BaseException] = []

    def transport(name: str) -> None:
        device_id = tenant.devices[name][0]

        async def go() -> None:
            await asyncio.gather(*(pipeline.submit([Point(device_id, "v", m * 2 + i, m * 2 + i) for i in range(2)],
                                                   enterprise_id=tenant.enterprise_id) for m in range(30)))

        try:
            asyncio.run(go())
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=transport, args=(n,)) for n in ("cell-a", "cell-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    pipeline.stop()
    assert not any(t.is_alive() for t in threads) and errors == []
    for name in ("cell-a", "cell-b"):
        assert len(store.range(tenant.devices[name][0], ["v"], 0, 1000)["v"]) == 60
