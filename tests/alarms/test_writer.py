"""The alarm writer in its child process: a child that dies is replaced and the alarm still
lands, channel changes reach the child's cache, and the app starts and stops its child."""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.dialects import sqlite as sqlite_dialect

from ecoplat.alarms.evaluation import AlarmEvaluation
from ecoplat.alarms.models import Alarm, OutboxMessage
from ecoplat.alarms.schemas import AlarmOut, ChannelIn, ShelveIn
from ecoplat.alarms.service import (
    _ALARM_COLUMNS,
    _OPEN_ALARMS,
    _event_data,
    _open_alarms_sqlite,
    _pair_params,
    acknowledge,
    create_channel,
    driver_connection,
    publish_after_commit,
    shelve,
    sqlite_datetime,
)
from ecoplat.alarms.state import AlarmState
from ecoplat.alarms.writer import AlarmWriter, ProcessAlarmWriter
from ecoplat.app import create_app
from ecoplat.config import Settings
from ecoplat.db import Database, UTCDateTime
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


# -- the writer's own conversions agree with SQLAlchemy's and pydantic's ----------------------


def _snapshots() -> list[dict[str, Any]]:
    t = datetime(2026, 11, 29, 20, 1, 2, 345678, tzinfo=UTC)
    base = {"id": 7, "enterprise_id": 3, "rule_id": 11, "device_id": 5, "site_id": None, "key": "cl2_ppm",
            "kind": "high", "state": "unacknowledged", "active": True, "acked": False, "priority": 1,
            "message": "Cl₂ 0.9 ppm at A-301", "value": 0.9, "limit": 0.5, "count": 3, "first_triggered_at": t,
            "last_triggered_at": t.replace(microsecond=0), "cleared_at": None, "acked_at": None, "acked_by": None,
            "shelved_until": None, "shelved_by": None, "shelve_reason": "", "closed_at": None}
    return [
        base,
        base | {"state": AlarmState.shelved, "value": "OPEN", "limit": 90, "site_id": 2, "acked_by": 4,
                "acked_at": t.astimezone(timezone(timedelta(hours=8))), "shelved_until": t + timedelta(hours=1),
                "shelved_by": 4, "shelve_reason": "maintenance"},
        base | {"state": "normal", "active": False, "acked": True, "value": None, "limit": None, "rule_id": None,
                "cleared_at": t, "closed_at": t, "value_note": "ignored"} | {"value": True},
        base | {"value": 12, "first_triggered_at": datetime(2026, 1, 1), "last_triggered_at": datetime(2026, 1, 1)},
    ]


def test_alarm_event_data_is_what_the_api_schema_gives() -> None:
    """The writer builds an alarm event's data from its own rows without pydantic; consoles and
    webhooks must get exactly the JSON that AlarmOut would give (datetimes with 'Z', enums as
    values, an integer limit as a float)."""
    for snapshot in _snapshots():
        expected = AlarmOut.model_validate(snapshot).model_dump(mode="json") | {"transition": "alarm"}
        got = _event_data(snapshot, "alarm")
        assert got == expected
        assert orjson.dumps(got) == orjson.dumps(expected)  # the same JSON, types and all


def test_sqlite_datetimes_are_bound_as_sqlalchemy_binds_them() -> None:
    dialect = sqlite_dialect.dialect()
    bind = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    t = datetime(2026, 11, 29, 20, 1, 2, 345678, tzinfo=UTC)
    for value in (t, t.replace(microsecond=0), t.astimezone(timezone(timedelta(hours=8))),
                  t.astimezone(timezone(timedelta(hours=-3, minutes=-30))), datetime(2026, 1, 1, 0, 0), None):
        assert sqlite_datetime(value) == bind(value), value


def test_open_alarms_read_on_the_driver_connection_match_sqlalchemy(tmp_path: Path) -> None:
    """The alarm writer reads a batch's open alarms with sqlite3 itself; every column must come
    back as SQLAlchemy would give it (datetimes with their zone, booleans, JSON values), in the
    states an operator leaves alarms in."""
    url = f"sqlite:///{tmp_path / 'alarms.db'}"
    upgrade(url)
    database = Database(url)
    with database.session() as db:
        plant = make_plant(db, devices=("E-101", "E-102"), roles=(Role.operator, Role.safety_officer))
        rules = [make_rule(db, plant.enterprise_id, device_id=plant.device_id(name), kind="high", key="temp_c",
                           params={"limit": 80}).id for name in ("E-101", "E-102")]
        text_rule = make_rule(db, plant.enterprise_id, device_id=plant.device_id("E-101"), kind="state_match",
                              key="mode", params={"values": ["TRIP"]}).id
    evaluation = AlarmEvaluation(database, AlarmWriter(database, alone=True))
    evaluation.load()
    e101, e102 = plant.device_id("E-101"), plant.device_id("E-102")
    evaluation.evaluate([Point(e101, "temp_c", T0, 91.5), Point(e102, "temp_c", T0 + 1, 95.0),
                         Point(e101, "mode", T0 + 2, "TRIP")])
    operator = plant.people[Role.operator.value].principal
    with database.session() as db:
        ids = {a.rule_id: a.id for a in db.scalars(select(Alarm).where(Alarm.enterprise_id == plant.enterprise_id))}
        acknowledge(db, actor=operator, alarm_id=ids[rules[0]], note="seen")
        shelve(db, actor=plant.people[Role.safety_officer.value].principal, alarm_id=ids[rules[1]], data=ShelveIn(minutes=30, reason="maintenance"))
    evaluation.evaluate([Point(e101, "temp_c", T0 + 10_000, 60.0)])  # acknowledged, then cleared: closed

    pairs = {(r, d) for r in (*rules, text_rule) for d in (e101, e102)}
    with database.session() as db:
        raw = {a.id: {c: getattr(a, c) for c in _ALARM_COLUMNS}
               for a in _open_alarms_sqlite(driver_connection(db), pairs)}
        orm = {row.id: dict(row._mapping) for row in db.execute(_OPEN_ALARMS, _pair_params(pairs))}
    assert len(orm) == 2 and raw == orm
    for row in raw.values():
        for name, value in row.items():
            assert type(value) is type(orm[row["id"]][name]), name
    database.dispose()
