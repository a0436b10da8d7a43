"""The alarm runtime, started by the app lifespan after connect's ingest pipeline.

    ingest submit (as points are accepted) ──receiver (a queue put)──► alarm evaluator thread:
                                     RuleEngine.evaluate (a dict lookup per point)
                                              │ condition changes (rare)
                                              ▼
                              alarm thread ──changes──► alarm writer (a child process in the
                                              │         app: alarms/writer.py): one transaction
                                              │         per batch (alarms, transitions, outbox)
                                              ◄──events, once committed──┘
                                   publish alarm.<ent> on the bus
                                              └──wake (new outbox rows)──► notification dispatcher

Points reach the rules as the ingest queue accepts them, beside the telemetry write rather than
after it: an alarm does not wait for the historian's write, and the rules never delay the
durable batch (nor the QoS 1 acknowledgements that wait for it). Database work stays off the
evaluator, so an alarm burst never delays evaluation. A ticker feeds the engine the wall clock for stale
data and delays that expire while a device is silent, and expires shelving.

An alarm event is published only once the transaction holding its alarm row has committed: what
an operator is shown is on record. The live console re-reads its rows from the database on each
event and acknowledgements address the row by id, so an event ahead of its row would show
nothing (or answer 404); and an annunciation kept only in memory would be lost silently with
the process. The commit therefore sits in the publish → alarm event path and is kept short: the
alarm writer plans outside SQLite's write lock and holds it for a handful of statements (see
service.apply_condition_changes), which the ingest writer would otherwise wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI
from sqlalchemy import select

from ecoplat.alarms import service
from ecoplat.alarms.engine import ConditionChange, DeviceInfo, RuleEngine, RuleError
from ecoplat.alarms.models import AlarmRule
from ecoplat.alarms.notifications import Dispatcher
from ecoplat.alarms.writer import AlarmWriter, ProcessAlarmWriter, Written
from ecoplat.childproc import WorkerProcessError
from ecoplat.db import Database
from ecoplat.events import Event, EventBus
from ecoplat.telemetry.points import Point, join_points

log = logging.getLogger(__name__)

TICK_INTERVAL_S = 1.0


class AlarmRuntime:
    def __init__(self, database: Database, events: EventBus, *, tick_interval_s: float = TICK_INTERVAL_S,
                 dispatcher: Dispatcher | None = None, clock: Callable[[], float] = time.time,
                 writer: AlarmWriter | ProcessAlarmWriter | None = None) -> None:
        self.database = database
        self.events = events
        self.tick_interval_s = tick_interval_s
        self.clock = clock
        self.engine = RuleEngine(device_resolver=self._resolve_device)
        self.dispatcher = dispatcher or Dispatcher(database)
        # In this process unless the caller passes one (the app: a ProcessAlarmWriter).
        self.writer: AlarmWriter | ProcessAlarmWriter = writer or AlarmWriter(database)
        self._queue: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._points: queue.SimpleQueue[tuple[Sequence[Point], float] | None] = queue.SimpleQueue()
        # Seconds from points accepted by ingest to their alarm events on the bus (the last 10,000).
        self.accepted_to_event_s: deque[float] = deque(maxlen=10_000)
        self._thread: threading.Thread | None = None
        self._evaluator: threading.Thread | None = None
        self._unsubscribe: list[Callable[[], None]] = []
        self.points_evaluated = 0
        self.changes_written = 0
        self.write_failures = 0

    # -- life cycle ---------------------------------------------------------------------------

    def load(self) -> None:
        with self.database.session() as db:
            created = service.instantiate_missing_profile_rules(db)
            if created:
                log.info("created %d alarm rules from device profile templates", created)
        with self.database.session() as db:
            specs = service.load_enabled_rules(db)
            active = service.open_active_alarms(db)
        for spec in specs:
            try:
                self.engine.upsert_rule(spec)
            except RuleError as e:
                log.error("alarm rule %s cannot be compiled and is skipped: %s", spec.id, e)
        for rule_id, device_id in active:
            self.engine.restore_active(rule_id, device_id)
        log.info("alarm engine loaded %d rules, %d active alarms", self.engine.rule_count, len(active))

    def start(self) -> None:
        self.load()
        self._thread = threading.Thread(target=self._run, name="ecoplat-alarm-writer", daemon=True)
        self._thread.start()
        self._evaluator = threading.Thread(target=self._evaluate_loop, name="ecoplat-alarm-evaluator", daemon=True)
        self._evaluator.start()
        self._unsubscribe.append(self.events.add_listener("alarm_rule.", self._on_rule_event))
        # A device claimed, deleted or re-credentialed is looked up afresh on its next point.
        self._unsubscribe.append(self.events.add_listener("credentials.", self._on_device_event))
        self._unsubscribe.append(self.events.add_listener("notification_channel.", self._on_channel_event))
        self.dispatcher.start()

    def stop(self, timeout: float = 10.0) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        if self._evaluator is not None:
            self._points.put(None)
            self._evaluator.join(timeout)
            self._evaluator = None
        if self._thread is not None:
            self._queue.put(("stop", None))
            self._thread.join(timeout)
            self._thread = None
        self.writer.close()
        self.dispatcher.stop()

    # -- inputs -------------------------------------------------------------------------------

    def on_points(self, points: Sequence[Point]) -> None:
        """The ingest receiver: runs as each submission enters the ingest queue (see
        IngestPipeline.add_receiver), so it only queues the points for the evaluator."""
        self._points.put((points, time.perf_counter()))

    def _evaluate_loop(self) -> None:
        """Evaluates what has arrived since the last round as one batch (a submission is often
        one device's sample), in arrival order."""
        while True:
            item = self._points.get()
            if item is None:
                return
            parts, received = [item[0]], item[1]
            stop = False
            while True:
                try:
                    more = self._points.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                parts.append(more[0])
            points = join_points(parts)
            try:
                changes = self.engine.evaluate(points)
                if changes:
                    self._queue.put(("changes", (changes, received)))
            except Exception:
                log.exception("evaluating %d points against the alarm rules failed", len(points))
            self.points_evaluated += len(points)
            if stop:
                return

    def tick(self, now_ms: int | None = None) -> None:
        now_ms = int(self.clock() * 1000) if now_ms is None else now_ms
        changes = self.engine.tick(now_ms)
        if changes:
            self._queue.put(("changes", (changes, None)))
        self._queue.put(("expire", None))

    def reload_rule(self, rule_id: int) -> None:
        """Recompiles one rule from the database (after its create, update or delete committed)."""
        with self.database.session() as db:
            rule = db.get(AlarmRule, rule_id)
            spec = service.rule_spec(rule) if rule is not None else None
            active = service.open_active_alarms(db, rule_id) if rule is not None else []
        if spec is None:
            self.engine.remove_rule(rule_id)
            return
        try:
            self.engine.upsert_rule(spec)
        except RuleError as e:
            log.error("alarm rule %s cannot be compiled: %s", rule_id, e)
            self.engine.remove_rule(rule_id)
            return
        for rid, device_id in active:
            self.engine.restore_active(rid, device_id)

    def _on_rule_event(self, event: Event) -> None:
        rule_id = event.data.get("rule_id")
        if isinstance(rule_id, int):
            try:
                self.reload_rule(rule_id)
            except Exception:
                log.exception("reloading alarm rule %s failed", rule_id)

    def _on_channel_event(self, event: Event) -> None:
        ent = event.topic.rpartition(".")[2]
        try:
            self.writer.forget_channels(int(ent) if ent.isdigit() else None)
        except Exception:
            # A writer process that died starts afresh, with an empty cache, on its next call.
            log.exception("telling the alarm writer that channels of %s changed failed", ent)

    def _on_device_event(self, event: Event) -> None:
        device_id = event.data.get("device_id")
        if isinstance(device_id, int):
            self.engine.forget_device(device_id)

    def _resolve_device(self, device_id: int) -> DeviceInfo | None:
        from ecoplat.connect.models import Device
        from ecoplat.tenancy.models import Equipment

        with self.database.session() as db:
            row = db.execute(
                select(Device.id, Device.enterprise_id, Device.profile_id, Device.name, Equipment.site_id)
                .outerjoin(Equipment, Equipment.id == Device.equipment_id)
                .where(Device.id == device_id)).first()
        if row is None or row.enterprise_id is None:
            return None
        return DeviceInfo(id=row.id, enterprise_id=row.enterprise_id, profile_id=row.profile_id,
                          name=row.name, site_id=row.site_id)

    # -- the alarm writer thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            kind, payload = self._queue.get()
            if kind == "stop":
                return
            changes: list[ConditionChange] = []
            received: list[float] = []
            barriers: list[threading.Event] = []
            expire = False
            stop = False
            while True:
                if kind == "changes":
                    changes.extend(payload[0])
                    if payload[1] is not None:
                        received.append(payload[1])
                elif kind == "expire":
                    expire = True
                elif kind == "barrier":
                    barriers.append(payload)
                elif kind == "stop":
                    stop = True
                try:
                    kind, payload = self._queue.get_nowait()
                except queue.Empty:
                    break
            if changes and self._write(changes):
                done = time.perf_counter()
                self.accepted_to_event_s.extend(done - r for r in received)
            if expire:
                self._expire()
            for barrier in barriers:
                barrier.set()
            if stop:
                return

    def _write(self, changes: list[ConditionChange]) -> bool:
        # The rules this engine holds spare the writer reading them (a retry there reads them).
        known_rules = {c.rule_id for c in changes if self.engine.has_rule(c.rule_id)}
        for attempt in range(2):
            try:
                written = self.writer.write(changes, known_rules)
            except WorkerProcessError:
                # The child died; the next call starts a new one, which reads the open alarms
                # before it writes. Had the batch committed before the child died, the replay
                # finds its alarms already in that state (a re-trigger updates, a clear of a
                # cleared alarm does nothing): on record once, but their events are not sent.
                log.exception("the alarm writer process failed writing %d changes (attempt %d)",
                              len(changes), attempt + 1)
                continue
            except Exception:
                log.exception("writing %d alarm changes failed", len(changes))
                break
            self._published(written)
            self.changes_written += len(changes)
            return True
        self.write_failures += 1
        return False

    def _published(self, written: Written) -> None:
        for topic, data in written.events:
            self.events.publish(topic, data)
        if written.outbox_rows:
            self.dispatcher.wake()

    def _expire(self) -> None:
        try:
            self._published(self.writer.expire())
        except Exception:
            log.exception("expiring shelved alarms failed")

    def drain(self, timeout: float = 5.0, *, points_evaluated: int = 0) -> None:
        """Waits until the listener has evaluated that many points in all, then until everything
        queued so far is written (tests and the benchmark)."""
        deadline = time.monotonic() + timeout
        while self.points_evaluated < points_evaluated:
            if time.monotonic() > deadline:
                raise TimeoutError("the ingest listener did not evaluate the points in time")
            time.sleep(0.001)
        done = threading.Event()
        self._queue.put(("barrier", done))
        if not done.wait(timeout):
            raise TimeoutError("the alarm writer did not catch up in time")


async def _ticker(runtime: AlarmRuntime) -> None:
    while True:
        await asyncio.sleep(runtime.tick_interval_s)
        try:
            # In a worker thread: the tick waits for the engine's lock, which an evaluation
            # holds for milliseconds, and the event loop meanwhile serves MQTT and HTTP.
            await asyncio.to_thread(runtime.tick)
        except Exception:
            log.exception("alarm tick failed")


async def start(app: FastAPI) -> None:
    database: Database = app.state.db
    writer = None
    if app.state.settings.alarm_write_process and database.shareable:
        writer = await asyncio.to_thread(ProcessAlarmWriter, database.url)
    runtime = AlarmRuntime(database, app.state.events, writer=writer)
    await asyncio.to_thread(runtime.start)
    ingest = getattr(app.state, "ingest", None)
    if ingest is not None:
        app.state.alarms_unsubscribe = ingest.add_receiver(runtime.on_points)
    else:
        log.warning("no ingest pipeline on app.state: alarm rules will not see telemetry")
    app.state.alarms = runtime
    app.state.alarms_ticker = asyncio.create_task(_ticker(runtime), name="ecoplat-alarm-ticker")


async def stop(app: FastAPI) -> None:
    ticker = getattr(app.state, "alarms_ticker", None)
    if ticker is not None:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
    unsubscribe = getattr(app.state, "alarms_unsubscribe", None)
    if unsubscribe is not None:
        unsubscribe()
    runtime: AlarmRuntime | None = getattr(app.state, "alarms", None)
    if runtime is not None:
        await asyncio.to_thread(runtime.stop)
        app.state.alarms = None
