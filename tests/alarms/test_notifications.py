"""Notification delivery through the outbox against real receivers: a local HTTP server that
fails and then recovers, a real SMTP server (aiosmtpd), in-app rows."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from ecoplat.alarms.models import InAppNotification, NotificationChannel, OutboxMessage
from ecoplat.alarms.notifications import DELIVERY_HEADER, SIGNATURE_HEADER, verify
from ecoplat.telemetry.points import Point

from .builders import Plant, make_plant, make_rule
from .conftest import Pipeline, free_port

T0 = 1_900_000_000_000


class Receiver:
    """A webhook receiver: answers 503 while `failing`, records what it accepted."""

    def __init__(self) -> None:
        self.failing = True
        self.refused = 0
        self.accepted: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.failing:
                    receiver.refused += 1
                    self.send_response(503)
                else:
                    receiver.accepted.append((dict(self.headers), body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _wait(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _setup(pipeline: Pipeline, kind: str, config: dict[str, Any]) -> tuple[Plant, int]:
    with pipeline.database.session() as db:
        plant = make_plant(db, devices=("E-101",), roles=())
        rule = make_rule(db, plant.enterprise_id, device_id=plant.device_id("E-101"), key="cl2_ppm",
                         params={"limit": 1.0, "unit": "ppm"}, priority=1,
                         message_template="{device} chlorine {value} {unit}")
        db.add(NotificationChannel(enterprise_id=plant.enterprise_id, name=kind, kind=kind, config=config,
                                   max_priority=2, actions=["alarm", "return_to_normal"]))
    pipeline.alarms.reload_rule(rule.id)
    return plant, rule.id


def _push(pipeline: Pipeline, plant: Plant, values: list[float]) -> None:
    dev = plant.device_id("E-101")
    expected = pipeline.alarms.points_evaluated + len(values)
    for i, v in enumerate(values):
        pipeline.ingest.submit_blocking([Point(dev, "cl2_ppm", T0 + i * 1000, v)], enterprise_id=plant.enterprise_id)
    pipeline.alarms.drain(points_evaluated=expected)


def test_webhook_receiver_that_fails_then_recovers_gets_every_notification(
        pipeline: Pipeline, receiver: Receiver) -> None:
    secret = "webhook-secret-1"
    plant, _ = _setup(pipeline, "webhook", {"url": f"http://127.0.0.1:{receiver.port}/alarms", "secret": secret,
                                            "timeout_s": 2})
    # Three alarms and three returns to normal while the receiver is down.
    _push(pipeline, plant, [0.2, 1.5, 0.3, 2.0, 0.1, 3.0, 0.2])
    _wait(lambda: receiver.refused >= 3, what="failed attempts")
    assert receiver.accepted == []
    ingest_ok = pipeline.ingest.stats.write_failures == 0
    assert ingest_ok  # a failing receiver never blocks ingest
    receiver.failing = False
    _wait(lambda: len({h[DELIVERY_HEADER] for h, _ in receiver.accepted}) >= 6, what="deliveries after recovery")
    time.sleep(0.3)  # nothing more should arrive
    got = {}
    for headers, body in receiver.accepted:
        assert verify(secret, body, headers[SIGNATURE_HEADER])
        got[headers[DELIVERY_HEADER]] = json.loads(body)
    assert len(got) == 6
    transitions = sorted((d["alarm"]["transition"], d["alarm"]["last_triggered_at"]) for d in got.values())
    assert [t for t, _ in transitions] == ["alarm"] * 3 + ["return_to_normal"] * 3
    assert {d["alarm"]["message"] for d in got.values() if d["alarm"]["transition"] == "alarm"} == {
        "E-101 chlorine 1.5 ppm", "E-101 chlorine 2.0 ppm", "E-101 chlorine 3.0 ppm"}
    with pipeline.database.session() as db:
        rows = db.scalars(select(OutboxMessage).where(OutboxMessage.enterprise_id == plant.enterprise_id)).all()
        assert {r.status for r in rows} == {"sent"} and all(r.attempts >= 2 for r in rows[:1])


class _Mailbox:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append(envelope.content)
        return "250 OK"


def test_email_through_a_real_smtp_server_and_in_app_rows(pipeline: Pipeline) -> None:
    box = _Mailbox()
    port = free_port()
    smtp = Controller(box, hostname="127.0.0.1", port=port)
    smtp.start()
    try:
        plant, _ = _setup(pipeline, "email", {"to": ["shift-lead@plant.cn"], "smtp_host": "127.0.0.1",
                                              "smtp_port": port, "from_address": "alarms@ecoplat.dev"})
        with pipeline.database.session() as db:
            db.add(NotificationChannel(enterprise_id=plant.enterprise_id, name="console", kind="in_app",
                                       config={}, max_priority=4, actions=["alarm"]))
        _push(pipeline, plant, [0.5, 4.0])
        _wait(lambda: box.messages, what="e-mail")
        mail = message_from_bytes(box.messages[0])
        assert mail["To"] == "shift-lead@plant.cn" and mail["Subject"].startswith("[URGENT] alarm:")
        assert "E-101 chlorine 4.0 ppm" in mail.get_payload()

        def in_app() -> list[InAppNotification]:
            with pipeline.database.session() as db:
                return list(db.scalars(select(InAppNotification)
                                       .where(InAppNotification.enterprise_id == plant.enterprise_id)))
        rows = _wait(in_app, what="in-app notification")
        assert len(rows) == 1 and rows[0].body == "E-101 chlorine 4.0 ppm" and rows[0].priority == 1
    finally:
        smtp.stop()


def test_channels_created_changed_or_removed_take_effect_on_the_next_alarm(pipeline: Pipeline) -> None:
    # The alarm writer keeps each enterprise's channels in memory; a change made through the
    # service must reach it for the very next alarm, not after some expiry.
    from ecoplat.alarms import service
    from ecoplat.alarms.schemas import ChannelIn, ChannelPatch

    with pipeline.database.session() as db:
        plant = make_plant(db, devices=("E-101",))
        rule = make_rule(db, plant.enterprise_id, device_id=plant.device_id("E-101"), key="cl2_ppm",
                         params={"limit": 1.0}, priority=1)
    pipeline.alarms.reload_rule(rule.id)
    admin = plant.people["enterprise_admin"].principal

    def outbox() -> list[tuple[int | None, str]]:
        with pipeline.database.session() as db:
            return [(m.channel_id, m.event["transition"]) for m in db.scalars(
                select(OutboxMessage).where(OutboxMessage.enterprise_id == plant.enterprise_id)
                .order_by(OutboxMessage.id))]

    def change(fn: Callable[..., Any], **kw: Any) -> Any:
        with pipeline.database.session() as db:
            service.publish_after_commit(db, pipeline.events.publish)
            out = fn(db, actor=admin, **kw)
            return getattr(out, "id", None)

    _push(pipeline, plant, [0.5, 4.0, 0.5])  # no channel yet: nothing to send, the cache knows
    assert outbox() == []
    first = change(service.create_channel, data=ChannelIn(name="console", kind="in_app"))
    _push(pipeline, plant, [4.0])
    assert outbox() == [(first, "alarm")]
    change(service.update_channel, channel_id=first, data=ChannelPatch(enabled=False))
    second = change(service.create_channel, data=ChannelIn(name="log", kind="in_app", actions=["return_to_normal"]))
    _push(pipeline, plant, [0.5])
    assert outbox() == [(first, "alarm"), (second, "return_to_normal")]
    change(service.delete_channel, channel_id=second)  # its outbox rows go with it
    _push(pipeline, plant, [4.0, 0.5])
    assert outbox() == [(first, "alarm")]


# PostgreSQL only: SQLite lets one writer in at a time, so there are no row locks to order.
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_deleting_a_channel_during_a_delivery_waits_for_it_instead_of_deadlocking(pipeline: Pipeline,
                                                                                  backend: str) -> None:
    """A delivery locks its outbox rows and then writes rows that reference the channel
    (in-app); deleting the channel meanwhile must wait for it, not deadlock with it."""
    from sqlalchemy import func

    from ecoplat.alarms import service
    from ecoplat.tenancy.models import Role

    from .builders import make_person

    plant, _ = _setup(pipeline, "in_app", {})
    with pipeline.database.session() as db:
        admin = make_person(db, plant.enterprise_id, Role.enterprise_admin).principal
    _push(pipeline, plant, [2.0])
    with pipeline.database.session() as db:
        channel_id, alarm_id = db.execute(
            select(OutboxMessage.channel_id, OutboxMessage.alarm_id).where(
                OutboxMessage.enterprise_id == plant.enterprise_id)).one()
    locked = threading.Event()
    errors: list[Exception] = []

    def deliver() -> None:  # what the dispatcher does for an in-app channel, slowed down
        try:
            with pipeline.database.session() as db:
                db.execute(select(OutboxMessage.id).where(OutboxMessage.channel_id == channel_id)
                           .with_for_update()).all()
                locked.set()
                time.sleep(0.5)  # the channel's deletion starts meanwhile
                db.add(InAppNotification(enterprise_id=plant.enterprise_id, channel_id=channel_id,
                                         alarm_id=alarm_id, priority=1, title="chlorine high"))
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    delivery = threading.Thread(target=deliver)
    delivery.start()
    assert locked.wait(10)
    with pipeline.database.session() as db:
        service.delete_channel(db, actor=admin, channel_id=channel_id)
    delivery.join(10)
    assert errors == []
    with pipeline.database.session() as db:
        assert db.get(NotificationChannel, channel_id) is None
        assert db.scalar(select(func.count()).select_from(OutboxMessage)
                         .where(OutboxMessage.channel_id == channel_id)) == 0
