"""Delivery of alarm notifications from the outbox: webhook (signed HTTP POST), e-mail (SMTP) and
in-app rows. At least once: a message leaves the outbox only when its receiver took it; failures
are retried with exponential backoff. The dispatcher runs in a thread of its own, so a slow or
failing receiver never holds up ingest or the alarm writer.

Webhook receivers verify ``X-Ecoplat-Signature: sha256=<hex HMAC-SHA256 of the raw body keyed
with the channel secret>`` and drop duplicates by ``X-Ecoplat-Delivery`` (the outbox id)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import smtplib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Any

import httpx
import orjson
from sqlalchemy import select

from ecoplat.alarms.models import InAppNotification, NotificationChannel, OutboxMessage
from ecoplat.db import Database, utcnow

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Ecoplat-Signature"
DELIVERY_HEADER = "X-Ecoplat-Delivery"
PRIORITY_NAMES = {1: "URGENT", 2: "HIGH", 3: "MEDIUM", 4: "LOW"}


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, body), signature)


def backoff(attempts: int, *, base_s: float = 1.0, max_s: float = 300.0) -> timedelta:
    """1 s, 2 s, 4 s … capped at max_s: a receiver that is down for an hour is tried ~20 times."""
    return timedelta(seconds=min(max_s, base_s * (2 ** max(0, attempts - 1))))


class DeliveryError(Exception):
    pass


def webhook_body(message: OutboxMessage) -> bytes:
    return orjson.dumps({"delivery_id": message.id, "enterprise_id": message.enterprise_id,
                         "alarm": message.event})


def send_webhook(client: httpx.Client, config: dict[str, Any], message: OutboxMessage) -> None:
    body = webhook_body(message)
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(config["secret"], body),
               DELIVERY_HEADER: str(message.id), "User-Agent": "Ecoplat-Alarms/1"}
    try:
        response = client.post(config["url"], content=body, headers=headers,
                               timeout=float(config.get("timeout_s", 5.0)))
    except httpx.HTTPError as e:
        raise DeliveryError(f"{type(e).__name__}: {e}") from e
    if not 200 <= response.status_code < 300:
        raise DeliveryError(f"receiver answered HTTP {response.status_code}")


def _subject(event: dict[str, Any]) -> str:
    prio = PRIORITY_NAMES.get(int(event.get("priority", 3)), "")
    return f"[{prio}] {event.get('transition', 'alarm')}: {event.get('message', '')}"[:250]


def send_email(config: dict[str, Any], message: OutboxMessage) -> None:
    event = message.event
    mail = EmailMessage()
    mail["Subject"] = _subject(event)
    mail["From"] = config["from_address"]
    mail["To"] = ", ".join(config["to"])
    mail["X-Ecoplat-Delivery"] = str(message.id)
    lines = [f"{k}: {event.get(k)}" for k in ("message", "state", "transition", "priority", "device_id",
                                              "value", "limit", "first_triggered_at", "last_triggered_at")]
    mail.set_content("\n".join(lines) + "\n")
    host, port = config["smtp_host"], int(config.get("smtp_port", 587))
    try:
        smtp_cls = smtplib.SMTP_SSL if config.get("smtp_ssl") else smtplib.SMTP
        with smtp_cls(host, port, timeout=10) as smtp:
            if config.get("smtp_starttls"):
                smtp.starttls()
            if config.get("smtp_user"):
                smtp.login(config["smtp_user"], config.get("smtp_password", ""))
            smtp.send_message(mail)
    except (OSError, smtplib.SMTPException) as e:
        raise DeliveryError(f"{type(e).__name__}: {e}") from e


@dataclass
class DispatchStats:
    sent: int = 0
    failed_attempts: int = 0
    dead: int = 0


class Dispatcher:
    """Polls the outbox (and wakes at once when the alarm writer says there is new mail)."""

    def __init__(self, database: Database, *, poll_interval_s: float = 1.0, batch: int = 100,
                 max_attempts: int = 40, backoff_base_s: float = 1.0, backoff_max_s: float = 300.0,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.database = database
        self.poll_interval_s = poll_interval_s
        self.batch = batch
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.clock = clock
        self.stats = DispatchStats()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = httpx.Client()

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="ecoplat-alarm-notify", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._client.close()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                handled = self.dispatch_once()
            except Exception:
                log.exception("notification dispatch failed; retrying")
                handled = 0
            if handled < self.batch:
                self._wake.wait(self.poll_interval_s)
                self._wake.clear()

    def dispatch_once(self) -> int:
        """Delivers the messages that are due; returns how many were tried."""
        now = self.clock()
        with self.database.session() as db:
            stmt = (select(OutboxMessage).where(OutboxMessage.status == "pending",
                                                OutboxMessage.next_attempt_at <= now)
                    .order_by(OutboxMessage.id).limit(self.batch))
            if not self.database.is_sqlite:
                # Several API processes may run a dispatcher; each message goes to one of them.
                stmt = stmt.with_for_update(skip_locked=True)
            due = list(db.scalars(stmt))
            if not due:
                return 0
            channels = {c.id: c for c in db.scalars(select(NotificationChannel).where(
                NotificationChannel.id.in_({m.channel_id for m in due})))}
            failed_channels: set[int] = set()
            for message in due:
                channel = channels.get(message.channel_id)
                if channel is None or not channel.enabled:
                    message.status, message.last_error = "dead", "channel disabled or deleted"
                    continue
                if channel.id in failed_channels:
                    # Keep the order of one receiver's messages: wait behind the one that failed.
                    message.next_attempt_at = now + backoff(1, base_s=self.backoff_base_s)
                    continue
                message.attempts += 1
                try:
                    self._deliver(db, channel, message)
                except DeliveryError as e:
                    failed_channels.add(channel.id)
                    self.stats.failed_attempts += 1
                    message.last_error = str(e)[:1000]
                    if message.attempts >= self.max_attempts:
                        message.status = "dead"
                        self.stats.dead += 1
                        log.error("notification %s to channel %s given up after %d attempts: %s",
                                  message.id, channel.id, message.attempts, e)
                    else:
                        message.next_attempt_at = now + backoff(message.attempts, base_s=self.backoff_base_s,
                                                                max_s=self.backoff_max_s)
                    continue
                message.status, message.sent_at, message.last_error = "sent", self.clock(), ""
                self.stats.sent += 1
            return len(due)

    def _deliver(self, db: Any, channel: NotificationChannel, message: OutboxMessage) -> None:
        config = channel.config or {}
        if channel.kind == "webhook":
            send_webhook(self._client, config, message)
        elif channel.kind == "email":
            send_email(config, message)
        elif channel.kind == "in_app":
            event = message.event
            db.add(InAppNotification(enterprise_id=message.enterprise_id, channel_id=channel.id,
                                     alarm_id=message.alarm_id, priority=int(event.get("priority", 3)),
                                     title=_subject(event)[:300], body=str(event.get("message", ""))[:1000]))
        else:
            raise DeliveryError(f"unknown channel kind {channel.kind!r}")
