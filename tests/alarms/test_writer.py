"""The alarm writer in its child process: a child that dies is replaced and the alarm still
lands, channel changes reach the child's cache, and the app starts and stops its child."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select

from ecoplat.alarms.models import Alarm, OutboxMessage
from ecoplat.alarms.schemas import ChannelIn
from ecoplat.alarms.service import create_channel, publish_after_commit
from ecoplat.alarms.writer import ProcessAlarmWriter
from ecoplat.app import create_app
from ecoplat.config import Settings
from ecoplat.migrations_runner import upgrade
from ecoplat.telemetry.points import Point
from ecoplat.tenancy.models import Role

from .builders import make_plant, make_rule
from .conftest import Pipeline

T0 = 1_900_000_000_000


def _gone(pid: int, timeout: float = 10.0) -> bool:
    """The process has exited (a zombie its parent has yet to reap counts as exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_a_killed_writer_process_is_replaced_and_the_alarm_still_lands(pipeline: Pipeline) -> None:
    with pipeline.database.session() as db:
        plant = make_plant(db, roles=())
        rule_id = make_rule(db, plant.enterprise_id, device_id=plant.device_id("E-101"), kind="high",
                            key="temp_c", params={"limit": 80}).id
    pipeline.alarms.reload_rule(rule_id)
    writer = pipeline.alarms.writer
    assert isinstance(writer, ProcessAlarmWriter)
    first, restarts = writer.pid, writer.restarts
    assert first not in (None, os.getpid())
    os.kill(first, signal.SIGKILL)
    assert _gone(first)

    dev = plant.device_id("E-101")
    expected = pipeline.alarms.points_evaluated + 1
    pipeline.ingest.submit_blocking([Point(dev, "temp_c", T0, 91.0)], enterprise_id=plant.enterprise_id)
    # The write waits for a new interpreter to start (seconds on a busy machine).
    pipeline.alarms.drain(60, points_evaluated=expected)

    assert writer.restarts == restarts + 1
    assert writer.pid not in (None, first)
    events = pipeline.alarm_events(plant.enterprise_id)
    assert [(e.data["transition"], e.data["value"]) for e in events] == [("alarm", 91.0)]
    with pipeline.database.session() as db:
        alarms = db.scalars(select(Alarm).where(Alarm.rule_id == rule_id)).all()
    assert [(a.id, a.state) for a in alarms] == [(events[0].data["id"], "unacknowledged")]


def test_a_channel_created_after_the_first_alarm_gets_the_next_one(pipeline: Pipeline) -> None:
    """The child caches each enterprise's channels; the channel event makes it read them again."""
    with pipeline.database.session() as db:
        plant = make_plant(db, roles=(Role.enterprise_admin,))
        rule_id = make_rule(db, plant.enterprise_id, device_id=plant.device_id("E-101"), kind="high",
                            key="temp_c", params={"limit": 80}).id
    pipeline.alarms.reload_rule(rule_id)
    dev = plant.device_id("E-101")

    def push(ts: int, value: float) -> None:
        expected = pipeline.alarms.points_evaluated + 1
        pipeline.ingest.submit_blocking([Point(dev, "temp_c", T0 + ts, value)], enterprise_id=plant.enterprise_id)
        pipeline.alarms.drain(points_evaluated=expected)

    push(0, 90.0)  # the child now holds "no channels" for this enterprise
    with pipeline.database.session() as db:
        # As the API does: the commit publishes notification_channel.<enterprise>, which the
        # runtime passes on to the child.
        publish_after_commit(db, pipeline.events.publish)
        channel = create_channel(db, actor=plant.people[Role.enterprise_admin.value].principal,
                                 data=ChannelIn(name="control room", kind="in_app"))
        channel_id = channel.id
    push(1000, 70.0)

    with pipeline.database.session() as db:
        queued = db.scalars(select(OutboxMessage.event).where(OutboxMessage.channel_id == channel_id)).all()
    assert [e["transition"] for e in queued] == ["return_to_normal"]


def test_the_app_writes_alarms_in_a_child_process_and_stops_it_on_shutdown(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    upgrade(url)
    settings = Settings(data_dir=tmp_path / "var", database_url=url, secret_key="test-secret-" + "x" * 32,
                        mqtt_enabled=False, demo_simulate_devices=0)
    app = create_app(settings)
    with TestClient(app):
        writer = app.state.alarms.writer
        assert isinstance(writer, ProcessAlarmWriter)
        pid = writer.pid
        assert pid not in (None, os.getpid())
        os.kill(pid, 0)  # running
    assert _gone(pid)


def test_the_app_writes_in_process_when_settings_say_so(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    upgrade(url)
    settings = Settings(data_dir=tmp_path / "var", database_url=url, secret_key="test-secret-" + "x" * 32,
                        mqtt_enabled=False, demo_simulate_devices=0, alarm_write_process=False)
    app = create_app(settings)
    with TestClient(app):
        assert not isinstance(app.state.alarms.writer, ProcessAlarmWriter)


def test_a_new_alarm_process_binds_every_device_at_load_and_settles_its_heap(fresh_database_url: str) -> None:
    """Rules reach their devices when the process starts, not at each device's first point (no
    lookup then), and what start-up made is out of the collector's walks (ecoplat.heap)."""
    from ecoplat.db import Database
    from ecoplat.heap import YOUNG_COLLECTION_AFTER

    database = Database(fresh_database_url)
    with database.session() as db:
        plant = make_plant(db, devices=("E-101", "E-102", "E-103"), roles=())
        make_rule(db, plant.enterprise_id, profile_id=plant.profile_id, kind="high", key="temp_c",
                  params={"limit": 90})
        make_rule(db, plant.enterprise_id, device_id=plant.device_id("E-102"), kind="low", key="temp_c",
                  params={"limit": 10})
        make_rule(db, plant.enterprise_id, device_id=plant.device_id("E-103"), kind="high", key="temp_c",
                  params={"limit": 99}, enabled=False)
    database.dispose()
    writer = ProcessAlarmWriter(fresh_database_url)
    try:
        assert writer.counts() == (2, 4)  # the profile rule on three devices, the device rule on one
        stats = writer.heap_stats()
        assert stats["frozen"] > 10_000 and stats["thresholds"][0] == YOUNG_COLLECTION_AFTER
        # A point of a bound device opens its alarm.
        written = writer.evaluate([Point(plant.device_id("E-101"), "temp_c", T0, 95.0)])
        assert [topic for topic, _ in written.events] == [f"alarm.{plant.enterprise_id}"]
    finally:
        writer.close()
