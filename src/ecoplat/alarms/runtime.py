"""The alarm runtime, started by the app lifespan after connect's ingest pipeline.

    ingest submit (as points are accepted) ──receiver (a queue put)──► alarm thread
        ships what arrived meanwhile, as one batch ──► alarm child (alarms/writer.py, running
        alarms/evaluation.py): RuleEngine.evaluate, then one transaction for the changes
        (alarms, transitions, outbox), then the events to publish
                                              ◄──events, once committed──┘
                                   publish alarm.<ent> on the bus
                                              └──wake (new outbox rows)──► notification dispatcher

Points reach the rules as the ingest queue accepts them, beside the telemetry write rather than
after it: an alarm does not wait for the historian's write, and the rules never delay the
durable batch (nor the QoS 1 acknowledgements that wait for it). The rules and the writes run
in the alarm child process (in-process for tests and a database bound to one connection), off
the GIL of the MQTT broker's event loop. A ticker feeds the engine the wall clock for stale
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

from ecoplat.alarms.evaluation import AlarmEvaluation
from ecoplat.alarms.notifications import Dispatcher
from ecoplat.alarms.writer import AlarmWriter, ProcessAlarmWriter, Written
from ecoplat.childproc import WorkerProcessError
from ecoplat.db import Database
from ecoplat.events import Event, EventBus
from ecoplat.telemetry.points import Point, join_points

log = logging.getLogger(__name__)

TICK_INTERVAL_S = 1.0
ROUND_MIN_S = 0.02

# What the alarm thread takes: accepted points (with when), a barrier to set, or None to stop.
_Item = tuple[Sequence[Point], float] | tuple[None, threading.Event] | None


class AlarmRuntime:
    def __init__(self, database: Database, events: EventBus, *, tick_interval_s: float = TICK_INTERVAL_S,
                 dispatcher: Dispatcher | None = None, clock: Callable[[], float] = time.time,
                 writer: AlarmEvaluation | ProcessAlarmWriter | None = None) -> None:
        self.database = database
        self.events = events
        self.tick_interval_s = tick_interval_s
        self.clock = clock
        self.dispatcher = dispatcher or Dispatcher(database)
        # The rules and the writes: in this process unless the caller passes a child (the app).
        self.writer: AlarmEvaluation | ProcessAlarmWriter = writer or AlarmEvaluation(database, AlarmWriter(database))
        self._points: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        # Seconds from points accepted by ingest to their alarm events on the bus (the last 10,000).
        self.accepted_to_event_s: deque[float] = deque(maxlen=10_000)
        self._thread: threading.Thread | None = None
        self._unsubscribe: list[Callable[[], None]] = []
        self.points_evaluated = 0
        self.events_published = 0
        self.write_failures = 0
        self.busy_seconds = 0.0  # wall time the alarm thread spent evaluating and writing

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if isinstance(self.writer, AlarmEvaluation):
            self.writer.load()  # a child loads the rules itself as it starts
        self._thread = threading.Thread(target=self._run, name="ecoplat-alarms", daemon=True)
        self._thread.start()
        self._unsubscribe.append(self.events.add_listener("alarm_rule.", self._on_rule_event))
        # A device claimed, deleted or re-credentialed is looked up afresh on its next point.
        self._unsubscribe.append(self.events.add_listener("credentials.", self._on_device_event))
        self._unsubscribe.append(self.events.add_listener("notification_channel.", self._on_channel_event))
        self.dispatcher.start()

    def stop(self, timeout: float = 10.0) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        if self._thread is not None:
            self._points.put(None)
            self._thread.join(timeout)
            self._thread = None
        self.writer.close()
        self.dispatcher.stop()

    # -- rules and devices --------------------------------------------------------------------

    def has_rule(self, rule_id: int) -> bool:
        """Whether the engine holds the rule (compiled and enabled)."""
        return self.writer.has_rule(rule_id)

    def counts(self) -> tuple[int, int]:
        """(rules compiled, rule-device bindings) in the engine."""
        return self.writer.counts()

    def reload_rule(self, rule_id: int) -> None:
        """Recompiles one rule from the database (after its create, update or delete committed)."""
        self.writer.reload_rule(rule_id)

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
            try:
                self.writer.forget_device(device_id)
            except Exception:
                log.exception("telling the rule engine that device %s changed failed", device_id)

    # -- points and time ----------------------------------------------------------------------

    def on_points(self, points: Sequence[Point]) -> None:
        """The ingest receiver: runs as each submission enters the ingest queue (see
        IngestPipeline.add_receiver), so it only queues the points for the alarm thread."""
        self._points.put((points, time.perf_counter()))

    def _run(self) -> None:
        """Ships what has arrived since the last round as one batch (a submission is often one
        device's sample), in arrival order, and publishes the events that come back."""
        started = 0.0
        while True:
            item = self._points.get()
            # Under load, rounds start at most every ROUND_MIN_S: a round costs the alarm process
            # a fixed part (the hand-over, a transaction) besides its points, and back-to-back
            # rounds of a few messages each spent the CPU the other stages needed (bench alarms
            # at 9,142 msgs/s: alarm process 0.063 → 0.050 ms CPU a message, busy 98 → 70-80 %,
            # p99 145-169 → 53-68 ms). A point that finds the thread idle longer goes at once.
            wait = started + ROUND_MIN_S - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            started = time.perf_counter()
            parts: list[Sequence[Point]] = []
            barriers: list[threading.Event] = []
            first: float | None = None
            stop = False
            while True:
                if item is None:
                    stop = True
                    break
                if item[0] is None:
                    barriers.append(item[1])  # type: ignore[arg-type]
                else:
                    parts.append(item[0])
                    if first is None:
                        first = item[1]  # type: ignore[assignment]
                try:
                    item = self._points.get_nowait()
                except queue.Empty:
                    break
            if parts:
                points = join_points(parts)
                started = time.perf_counter()
                written = self._call(self.writer.evaluate, points, what=f"evaluating {len(points)} points")
                self.busy_seconds += time.perf_counter() - started
                if written is not None and written.events and first is not None:
                    self.accepted_to_event_s.append(time.perf_counter() - first)
                self.points_evaluated += len(points)
            for barrier in barriers:
                barrier.set()
            if stop:
                return

    def tick(self, now_ms: int | None = None) -> None:
        """Time passing (the ticker calls this each second): stale data, delays, shelving."""
        now_ms = int(self.clock() * 1000) if now_ms is None else now_ms
        self._call(self.writer.tick, now_ms, what="the alarm tick")

    def _call(self, op: Callable[..., Written], *args: Any, what: str) -> Written | None:
        """Runs op in the writer and publishes what it wrote; a child that died is replaced and
        asked once more. Had its batch committed before it died, the replay finds its alarms
        already in that state (a re-trigger updates, a clear of a cleared alarm does nothing):
        on record once, but their events are not sent."""
        for attempt in range(2):
            try:
                written = op(*args)
            except WorkerProcessError:
                log.exception("the alarm process failed %s (attempt %d)", what, attempt + 1)
                continue
            except Exception:
                log.exception("%s failed", what)
                break
            self._published(written)
            return written
        self.write_failures += 1
        return None

    def _published(self, written: Written) -> None:
        for topic, data in written.events:
            self.events.publish(topic, data)
        self.events_published += len(written.events)
        if written.outbox_rows:
            self.dispatcher.wake()

    def drain(self, timeout: float = 5.0, *, points_evaluated: int = 0) -> None:
        """Waits until the listener has evaluated that many points in all, then until everything
        queued so far is evaluated and written (tests and the benchmark)."""
        deadline = time.monotonic() + timeout
        while self.points_evaluated < points_evaluated:
            if time.monotonic() > deadline:
                raise TimeoutError("the ingest listener did not evaluate the points in time")
            time.sleep(0.001)
        done = threading.Event()
        self._points.put((None, done))
        if not done.wait(timeout):
            raise TimeoutError("the alarm thread did not catch up in time")


async def _ticker(runtime: AlarmRuntime) -> None:
    while True:
        await asyncio.sleep(runtime.tick_interval_s)
        try:
            # In a worker thread: the tick waits its turn in the alarm process (or for the
            # in-process engine), and the event loop meanwhile serves MQTT and HTTP.
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
