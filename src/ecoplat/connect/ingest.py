"""The ingest pipeline every transport (MQTT, HTTP, OPC UA, Modbus) hands its Points to.

    transports ──submit()──► bounded queue ──► ONE writer thread ──► TelemetryStore.write()
                     │                               │  device status counters (one statement per batch)
                     │                               ├► resolve the submitters' futures (QoS 1 acks after durability)
                     │                               ├► durable listeners, in order
                     │                               └► events telemetry.<enterprise>.<device>
                     └► receivers (the alarm engine), in queue order, as the points are accepted

Receivers see the points as they enter the queue, not after the store: an operator's alarm
must not wait for the historian's write (tens of ms for a large batch on SQLite). A write that
fails gets the sender an error and it resends, so a receiver may see a point again; the
rule engine takes repeated points like any others.

Why one writer thread: the store is fastest with few, large writes (one executemany/COPY per
batch), and a single writer keeps points of one device in arrival order for the rule engine.
The queue is bounded in points; `submit` awaits while it is full, so a flood slows the senders
(MQTT stops reading their sockets) instead of growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import operator
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, delete, select, text, update
from sqlalchemy.exc import IntegrityError

from ecoplat.connect.models import (
    AttributeScope,
    Device,
    DeviceAttribute,
    DeviceErrorLog,
    DeviceProfile,
    DeviceReject,
)
from ecoplat.db import Database, utcnow
from ecoplat.events import Event, EventBus
from ecoplat.telemetry.points import Frames, Point, TelemetryStore, join_points

log = logging.getLogger(__name__)

Listener = Callable[[Sequence[Point]], None]

# Recent-errors log kept per device in the database; older rows are pruned at each flush.
ERROR_LOG_PER_DEVICE = 50
# One log line per (device, reason) per this many seconds, whatever the reject rate.
REJECT_LOG_INTERVAL_S = 10.0
REJECT_FLUSH_INTERVAL_S = 1.0
# Under load, device status counters are written at most this often (one UPDATE batch each);
# once the queue has stayed empty for STATUS_IDLE_FLUSH_S they are written at once, so an idle
# device's page is current. (Written whenever the queue ran empty, at a steady 18,000 msgs/s
# that was an UPDATE of a few hundred devices after nearly every batch, each a transaction in
# the database the alarm writer commits to, and WAL pages its checkpoints then copied.)
STATUS_FLUSH_INTERVAL_S = 0.5
STATUS_IDLE_FLUSH_S = 0.05
# How often the writer looks for devices that went quiet longer than their profile's
# inactivity timeout (they are then announced offline on device.<enterprise>.<device>).
PRESENCE_SWEEP_S = 5.0
TIMEOUT_CACHE_S = 60.0
DEFAULT_INACTIVITY_TIMEOUT_S = 600
# Unknown tokens are remembered briefly so a misconfigured device cannot hammer the database.
NEGATIVE_CACHE_S = 5.0
# After a rotation or revocation, lookups of that device skip the cache until the change has
# surely committed (the route's unit of work commits after the service returns).
INVALIDATION_GRACE_S = 5.0


_device_of = operator.itemgetter(0)  # Point.device_id, read in C

# Device status counters, one statement per flush: [[id, activity, messages, points], ...].
_STATUS_SQL = {
    False: ("UPDATE devices SET last_seen_at = :seen, last_activity = j.value ->> 1, "
            "messages_total = messages_total + (j.value ->> 2), points_total = points_total + (j.value ->> 3) "
            "FROM json_each(:rows) AS j WHERE devices.id = j.value ->> 0"),
    True: ("UPDATE devices SET last_seen_at = :seen, last_activity = j.value ->> 1, "
           "messages_total = messages_total + (j.value ->> 2)::bigint, "
           "points_total = points_total + (j.value ->> 3)::bigint "
           "FROM json_array_elements(CAST(:rows AS json)) AS j(value) WHERE devices.id = (j.value ->> 0)::int"),
}


def _points_per_device(points: Sequence[Point]) -> dict[int, int]:
    if type(points) is Frames:
        counts: dict[int, int] = {}
        for d, _ts, values in points.frames:
            counts[d] = counts.get(d, 0) + len(values)
        return counts
    return Counter(map(_device_of, points))


def _added(listeners: list[Listener], fn: Listener) -> Callable[[], None]:
    listeners.append(fn)

    def remove() -> None:
        if fn in listeners:
            listeners.remove(fn)

    return remove


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class IngestStopped(RuntimeError):
    """submit() on a pipeline that is not running (shutting down or never started)."""


@dataclass(slots=True, frozen=True)
class DeviceRef:
    """What a transport needs to know about an authenticated device, cached per token."""

    device_id: int
    enterprise_id: int | None
    name: str
    is_gateway: bool = False
    revoked: bool = False


@dataclass(slots=True)
class _Submission:
    points: Sequence[Point]
    enterprise_id: int
    loop: asyncio.AbstractEventLoop | None
    future: asyncio.Future[None] | None
    done: threading.Event | None = None
    error: BaseException | None = None
    at: float = 0.0  # time.monotonic() when accepted
    # submit_nowait(): called on `loop` with None, or the error, once the batch is done.
    callback: Callable[[BaseException | None], None] | None = None


@dataclass(slots=True)
class _RejectCounter:
    count: int = 0
    last_detail: str = ""
    last_at: datetime = field(default_factory=utcnow)


@dataclass
class IngestStats:
    points_written: int = 0
    batches_written: int = 0
    write_failures: int = 0
    rejects: int = 0
    write_seconds: float = 0.0  # wall time spent in the store's write (how busy the writer is)


class IngestPipeline:
    def __init__(self, *, database: Database, store: TelemetryStore, events: EventBus,
                 batch_max_points: int = 20_000, batch_max_ms: int = 10,
                 queue_max_points: int = 200_000) -> None:
        self.database = database
        self.store = store
        self.events = events
        self.batch_max_points = max(1, batch_max_points)
        self.batch_max_s = max(0, batch_max_ms) / 1000
        self.queue_max_points = max(1, queue_max_points)
        self.stats = IngestStats()

        self._items: deque[_Submission] = deque()
        self._queued_points = 0  # submitted and not yet durable (in the queue or being written)
        self._unbatched_points = 0  # still in the queue
        self._cond = threading.Condition()
        # One "space freed" event per event loop that submits (the app's loop, a transport's own
        # loop...): every waiter is woken on its own loop whenever a batch leaves the queue.
        self._space: dict[asyncio.AbstractEventLoop, asyncio.Event] = {}
        self._space_lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._receivers: list[Listener] = []
        self._thread: threading.Thread | None = None
        self._stopping = False

        self._token_cache: dict[str, DeviceRef] = {}
        self._by_token: dict[str, DeviceRef] = {}  # raw token → ref, cleared with the cache above
        self._negative_cache: dict[str, float] = {}
        self._invalidated: dict[int, float] = {}
        self._children: dict[tuple[int, str], DeviceRef] = {}
        self._cache_lock = threading.Lock()

        self._reject_lock = threading.Lock()
        self._rejects: dict[tuple[int | None, str], _RejectCounter] = {}
        self._recent: deque[tuple[int | None, str, str, datetime]] = deque(maxlen=10_000)
        self._reject_logged_at: dict[tuple[int | None, str], float] = {}
        self._flush_lock = threading.Lock()
        self._last_reject_flush = time.monotonic()

        # Device status counters waiting to be written (last activity, messages, points).
        self._status_lock = threading.Lock()
        self._pending_activity: dict[int, str] = {}
        self._pending_messages: dict[int, int] = {}
        self._pending_points: dict[int, int] = {}
        self._last_status_flush = 0.0

        # device → (enterprise, monotonic time last seen) for the devices currently online
        self._presence: dict[int, tuple[int, float]] = {}
        self._presence_lock = threading.Lock()
        self._timeouts: dict[int, int] = {}
        self._timeouts_loaded_at = time.monotonic()
        self._last_presence_sweep = time.monotonic()

        self._rpc_ids = itertools.count(1)
        self._rpc_waiters: dict[tuple[int, int], tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = {}
        self._unsubscribe: list[Callable[[], None]] = []

    # ---- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="ecoplat-ingest-writer", daemon=True)
        self._thread.start()
        self._unsubscribe.append(self.events.add_listener("credentials.", self._on_credentials_event))
        self._unsubscribe.append(self.events.add_listener("rpc_response.", self._on_rpc_response_event))

    def stop(self, timeout: float = 10.0) -> None:
        """Writes what is queued, flushes the reject counters, then ends the writer thread."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.flush_rejects()

    # ---- submitting ---------------------------------------------------------------------------

    @property
    def queued_points(self) -> int:
        """Points accepted by submit() and not yet durable."""
        return self._queued_points

    async def submit(self, points: Sequence[Point], *, enterprise_id: int) -> None:
        """Queues the points and returns once they are durable. Awaits while the queue is full
        (backpressure). A single submission larger than the whole bound is let in when the queue
        is empty, so it is never stuck."""
        if not points:
            return
        loop = asyncio.get_running_loop()
        await self._room_for(len(points), loop)
        future: asyncio.Future[None] = loop.create_future()
        self._enqueue(points, enterprise_id, loop, future, None)
        await future

    async def submit_queued(self, points: Sequence[Point], *, enterprise_id: int,
                            on_durable: Callable[[BaseException | None], None] | None) -> None:
        """Waits for room (as submit() does) and queues the points; returns once they are
        queued. `on_durable` (if any) is called on this event loop with None once they are
        durable, or with the error."""
        if not points:
            raise ValueError("submit_queued needs at least one point")
        loop = asyncio.get_running_loop()
        await self._room_for(len(points), loop)
        self._enqueue(points, enterprise_id, loop, None, on_durable)

    def submit_nowait(self, points: Sequence[Point], *, enterprise_id: int,
                      on_durable: Callable[[BaseException | None], None] | None) -> bool:
        """submit_queued() without a coroutine, for the MQTT broker's hot path: queues the
        points and returns True, or returns False, queuing nothing, when the queue has no room
        (the caller then awaits submit_queued(), which waits for it).

        An awaited submit() keeps a task, its coroutines and a future alive per MQTT message
        until the batch is durable: at 10,000 messages a second, tens of thousands of objects
        that every young collection of the cycle collector walked (see ecoplat.heap)."""
        n = len(points)
        if n == 0:
            raise ValueError("submit_nowait needs at least one point")
        if self._queued_points and self._queued_points + n > self.queue_max_points:
            return False
        self._enqueue(points, enterprise_id, asyncio.get_running_loop() if on_durable is not None else None,
                      None, on_durable)
        return True

    async def _room_for(self, n: int, loop: asyncio.AbstractEventLoop) -> None:
        space = self._space.get(loop)
        if space is None:
            with self._space_lock:
                space = self._space.setdefault(loop, asyncio.Event())
        while self._queued_points and self._queued_points + n > self.queue_max_points:
            space.clear()
            await space.wait()

    def _enqueue(self, points: Sequence[Point], enterprise_id: int, loop: asyncio.AbstractEventLoop | None,
                 future: asyncio.Future[None] | None,
                 callback: Callable[[BaseException | None], None] | None) -> None:
        if self._thread is None or self._stopping:
            raise IngestStopped("the ingest pipeline is not running")
        n = len(points)
        with self._cond:
            first = not self._items
            self._queued_points += n
            self._unbatched_points += n
            self._items.append(_Submission(points, enterprise_id, loop, future, at=time.monotonic(),
                                           callback=callback))
            self._receive(points)
            # The writer needs waking only for a first item or a full batch; otherwise its timed
            # wait ends the fill window. A wake-up per message would cost a GIL hand-over each.
            if first or self._unbatched_points >= self.batch_max_points:
                self._cond.notify()

    def submit_blocking(self, points: Sequence[Point], *, enterprise_id: int, timeout: float = 60.0) -> None:
        """The same as submit() for code running in a thread of its own (not on an event loop)."""
        n = len(points)
        if n == 0:
            return
        if self._thread is None or self._stopping:
            raise IngestStopped("the ingest pipeline is not running")
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queued_points and self._queued_points + n > self.queue_max_points:
                if not self._cond.wait(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError("the ingest queue stayed full")
            item = _Submission(points, enterprise_id, None, None, threading.Event(), at=time.monotonic())
            self._queued_points += n
            self._unbatched_points += n
            self._items.append(item)
            self._receive(points)
            self._cond.notify_all()
        assert item.done is not None
        if not item.done.wait(max(0.0, deadline - time.monotonic())):
            raise TimeoutError("the points did not become durable in time")
        if item.error is not None:
            raise item.error

    def add_listener(self, fn: Listener) -> Callable[[], None]:
        """fn(points) runs in the writer thread right after each durable batch, in order."""
        return _added(self._listeners, fn)

    def add_receiver(self, fn: Listener) -> Callable[[], None]:
        """fn(points) runs as each submission is accepted into the queue, before it is durable,
        in queue order (under the queue's lock, in the submitter's thread): it must only hand
        the points on, e.g. put them on a queue of its own."""
        return _added(self._receivers, fn)

    def _receive(self, points: Sequence[Point]) -> None:
        for receiver in self._receivers:
            try:
                receiver(points)
            except Exception:
                log.exception("ingest receiver %r failed", receiver)

    # ---- writer thread ------------------------------------------------------------------------

    def _take_batch(self) -> list[_Submission]:
        with self._cond:
            while not self._items and not self._stopping:
                self._cond.wait(STATUS_IDLE_FLUSH_S if self._pending_activity else REJECT_FLUSH_INTERVAL_S)
                if not self._items:
                    break
            if not self._items:
                return []
            # Let the batch fill up to its size, but never keep a submission longer than
            # batch_max_ms: one that waited while the last batch was written goes at once.
            deadline = self._items[0].at + self.batch_max_s
            while self._unbatched_points < self.batch_max_points and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch: list[_Submission] = []
            taken = 0
            while self._items and (not batch or taken + len(self._items[0].points) <= self.batch_max_points):
                item = self._items.popleft()
                batch.append(item)
                taken += len(item.points)
            self._unbatched_points -= taken
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch:
                self._write(batch)
            elif self._pending_activity:
                self._flush_status()  # the queue stayed empty: an idle device's page is current
            if time.monotonic() - self._last_reject_flush >= REJECT_FLUSH_INTERVAL_S:
                self._flush_status()
                self.flush_rejects()
            if time.monotonic() - self._last_presence_sweep >= PRESENCE_SWEEP_S:
                self.sweep_presence()
            with self._cond:
                if self._stopping and not self._items:
                    break
        self._flush_status()

    def _write(self, batch: list[_Submission]) -> None:
        enterprise_of: dict[int, int] = {}
        points_of: dict[int, int] = {}
        messages_of: dict[int, int] = {}
        points = join_points([item.points for item in batch])
        for item in batch:
            ent = item.enterprise_id
            for d, n in _points_per_device(item.points).items():
                enterprise_of[d] = ent
                points_of[d] = points_of.get(d, 0) + n
                messages_of[d] = messages_of.get(d, 0) + 1
        total = len(points)
        try:
            started = time.perf_counter()
            try:
                self.store.write(points, enterprise_of)
            finally:
                self.stats.write_seconds += time.perf_counter() - started
        except Exception as e:
            self.stats.write_failures += 1
            log.exception("telemetry write of %d points failed; the senders get an error and may retry", total)
            self._finish(batch, total, error=e)
            return
        self.stats.points_written += total
        self.stats.batches_written += 1
        # Durable: acknowledge and hand to the rule engine first; the status counters are a
        # transaction of their own and would otherwise sit between the write and the alarms.
        self._finish(batch, total, error=None)
        for listener in list(self._listeners):
            try:
                listener(points)
            except Exception:
                log.exception("ingest listener %r failed", listener)
        publish = self.events.publish
        for (device_id, ts), values in self._live_values(points, enterprise_of).items():
            publish(f"telemetry.{enterprise_of[device_id]}.{device_id}",
                    {"device_id": device_id, "ts": ts, "values": values})
        seen_at = time.monotonic()
        presence = self._presence
        with self._presence_lock:
            came_online = [(d, ent) for d, ent in enterprise_of.items() if d not in presence]
            for device_id, ent in enterprise_of.items():
                presence[device_id] = (ent, seen_at)
        for device_id, ent in came_online:
            publish(f"device.{ent}.{device_id}", {"device_id": device_id, "status": "online", "ts": now_ms()})
        try:
            self._update_status(points_of, messages_of)
        except Exception:
            log.exception("updating device status counters failed (the points are stored)")

    def _live_values(self, points: Sequence[Point], enterprise_of: Mapping[int, int]
                     ) -> dict[tuple[int, int], dict[str, Any]]:
        """{(device, ts): {key: value}} for the live feeds, only for devices someone listens to
        (a page, a Redis bridge): grouping costs a Python step per point."""
        interested = self.events.interested
        if not interested("telemetry."):
            return {}
        wanted = {d for d, ent in enterprise_of.items() if interested(f"telemetry.{ent}.{d}.")}
        out: dict[tuple[int, int], dict[str, Any]] = {}
        if type(points) is Frames:
            for d, ts, values in points.frames:
                if d in wanted:
                    group = out.get((d, ts))
                    if group is None:
                        out[(d, ts)] = dict(values)
                    else:
                        group.update(values)
            return out
        for d, key, ts, value in points:
            if d in wanted:
                group = out.get((d, ts))
                if group is None:
                    out[(d, ts)] = group = {}
                group[key] = value
        return out

    def sweep_presence(self) -> list[int]:
        """Announces devices silent for longer than their profile's inactivity timeout as
        offline (event device.<enterprise>.<device>, status "offline"); returns their ids."""
        now = time.monotonic()
        self._last_presence_sweep = now
        if now - self._timeouts_loaded_at > TIMEOUT_CACHE_S:
            self._timeouts.clear()  # profiles may have changed their timeout
            self._timeouts_loaded_at = now
        unknown = [d for d in self._presence if d not in self._timeouts]
        if unknown:
            try:
                with self.database.session() as db:
                    rows = db.execute(select(Device.id, DeviceProfile.inactivity_timeout_s)
                                      .outerjoin(DeviceProfile, DeviceProfile.id == Device.profile_id)
                                      .where(Device.id.in_(unknown))).all()
            except Exception:
                log.exception("reading inactivity timeouts failed")
                return []
            for device_id, timeout in rows:
                self._timeouts[device_id] = timeout or DEFAULT_INACTIVITY_TIMEOUT_S
        gone: list[tuple[int, int]] = []
        with self._presence_lock:
            for device_id, (ent, seen_at) in list(self._presence.items()):
                if now - seen_at > self._timeouts.get(device_id, DEFAULT_INACTIVITY_TIMEOUT_S):
                    del self._presence[device_id]
                    gone.append((device_id, ent))
        for device_id, ent in gone:
            self.events.publish(f"device.{ent}.{device_id}",
                                {"device_id": device_id, "status": "offline", "ts": now_ms()})
        return [device_id for device_id, _ in gone]

    def _finish(self, batch: list[_Submission], total: int, *, error: BaseException | None) -> None:
        with self._cond:
            self._queued_points -= total
            self._cond.notify_all()
        # One wake-up per event loop per batch, not one per submission: waking a loop costs a
        # syscall, and a batch may carry thousands of MQTT messages.
        by_loop: dict[asyncio.AbstractEventLoop, list[_Waiter]] = {}
        for item in batch:
            waiter = item.future if item.future is not None else item.callback
            if waiter is not None and item.loop is not None:
                waiters = by_loop.get(item.loop)
                if waiters is None:
                    by_loop[item.loop] = waiters = []
                waiters.append(waiter)
            if item.done is not None:
                item.error = error
                item.done.set()
        with self._space_lock:
            spaces = list(self._space.items())
        for loop, space in spaces:
            if loop.is_closed():
                with self._space_lock:
                    self._space.pop(loop, None)
                continue
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                loop.call_soon_threadsafe(_wake, by_loop.pop(loop, ()), error, space)
        for loop, futures in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the submitter's loop is closed
                loop.call_soon_threadsafe(_wake, futures, error, None)

    def _update_status(self, points_of: Mapping[int, int], messages_of: Mapping[int, int]) -> None:
        with self._status_lock:
            pending_points, pending_messages, activity = (self._pending_points, self._pending_messages,
                                                          self._pending_activity)
            for d, n in points_of.items():
                pending_points[d] = pending_points.get(d, 0) + n
                pending_messages[d] = pending_messages.get(d, 0) + messages_of[d]
                activity[d] = "telemetry"
        if time.monotonic() - self._last_status_flush >= STATUS_FLUSH_INTERVAL_S:
            self._flush_status()

    def _flush_status(self) -> None:
        """Writes the pending status counters: one executemany for every device touched."""
        self._last_status_flush = time.monotonic()
        with self._status_lock:
            activity, messages, points = self._pending_activity, self._pending_messages, self._pending_points
            if not activity:
                return
            self._pending_activity, self._pending_messages, self._pending_points = {}, {}, {}
        now = utcnow()
        rows = [{"b_id": d, "b_seen": now, "b_activity": a, "b_messages": messages.get(d, 0),
                 "b_points": points.get(d, 0)} for d, a in activity.items()]
        try:
            self._execute_status(rows)
        except Exception:
            log.exception("updating the status of %d devices failed; kept for the next try", len(rows))
            with self._status_lock:
                for d, a in activity.items():
                    self._pending_activity.setdefault(d, a)
                    self._pending_messages[d] = self._pending_messages.get(d, 0) + messages.get(d, 0)
                    self._pending_points[d] = self._pending_points.get(d, 0) + points.get(d, 0)

    def _execute_status(self, rows: list[dict[str, Any]]) -> None:
        """One UPDATE over a JSON array of every touched device (an executemany gives up the GIL
        and waits for it again per row, all of it holding SQLite's write lock)."""
        if not rows:
            return
        data = orjson.dumps([[r["b_id"], r["b_activity"], r["b_messages"], r["b_points"]] for r in rows]).decode()
        seen = bindparam("seen", rows[0]["b_seen"], type_=Device.__table__.c.last_seen_at.type)
        with self.database.engine.begin() as conn:
            sql = _STATUS_SQL[conn.dialect.name == "postgresql"]
            conn.execute(text(sql).bindparams(seen), {"rows": data})

    def note_activity(self, device_id: int, activity: str, *, messages: int = 1) -> None:
        """Marks a device seen for a message that carried no telemetry (attributes, connect, RPC);
        written with the next status update (within a second)."""
        with self._status_lock:
            self._pending_activity[device_id] = activity[:32]
            self._pending_messages[device_id] = self._pending_messages.get(device_id, 0) + messages

    # ---- rejects ------------------------------------------------------------------------------

    def reject(self, device_id: int | None, reason: str, detail: str) -> None:
        """Counts one rejected message or value for the device (None: an unknown sender), keeps
        the detail for the device's error list and logs it, at most once per 10 s per kind."""
        reason = str(reason)[:32]
        detail = detail[:500]
        now = utcnow()
        key = (device_id, reason)
        with self._reject_lock:
            counter = self._rejects.get(key)
            if counter is None:
                self._rejects[key] = counter = _RejectCounter()
            counter.count += 1
            counter.last_detail = detail
            counter.last_at = now
            self._recent.append((device_id, reason, detail, now))
            self.stats.rejects += 1
            mono = time.monotonic()
            should_log = mono - self._reject_logged_at.get(key, -1e9) >= REJECT_LOG_INTERVAL_S
            if should_log:
                self._reject_logged_at[key] = mono
        if should_log:
            log.warning("ingest reject device=%s reason=%s: %s", device_id, reason, detail,
                        extra={"device_id": device_id, "reason": reason})

    def flush_rejects(self) -> None:
        """Adds the in-memory reject counts to the database (DeviceReject, the error log and the
        device's errors_total). Safe from any thread."""
        with self._flush_lock:
            self._last_reject_flush = time.monotonic()
            with self._reject_lock:
                counters, self._rejects = self._rejects, {}
                recent = list(self._recent)
                self._recent.clear()
            if not counters:
                return
            try:
                self._write_rejects(counters, recent)
            except Exception:
                log.exception("flushing %d reject counters failed; they are kept for the next try", len(counters))
                with self._reject_lock:
                    for key, c in counters.items():
                        mine = self._rejects.setdefault(key, _RejectCounter())
                        mine.count += c.count
                        if not mine.last_detail:
                            mine.last_detail, mine.last_at = c.last_detail, c.last_at

    def _write_rejects(self, counters: dict[tuple[int | None, str], _RejectCounter],
                       recent: list[tuple[int | None, str, str, datetime]]) -> None:
        with self.database.session() as db:
            device_ids = {d for d, _ in counters if d is not None}
            owners = dict(db.execute(select(Device.id, Device.enterprise_id).where(Device.id.in_(device_ids))).all()) \
                if device_ids else {}
            per_device: dict[int, int] = {}
            for (device_id, reason), c in counters.items():
                if device_id is not None and device_id not in owners:
                    continue  # the device was deleted meanwhile
                cond = DeviceReject.device_id.is_(None) if device_id is None else DeviceReject.device_id == device_id
                row = db.scalar(select(DeviceReject).where(cond, DeviceReject.reason == reason))
                if row is None:
                    db.add(DeviceReject(device_id=device_id, enterprise_id=owners.get(device_id) if device_id else None,
                                        reason=reason, count=c.count, last_detail=c.last_detail, last_at=c.last_at))
                else:
                    row.count += c.count
                    row.last_detail, row.last_at = c.last_detail, c.last_at
                    if device_id is not None:
                        row.enterprise_id = owners.get(device_id)
                if device_id is not None:
                    per_device[device_id] = per_device.get(device_id, 0) + c.count
            for device_id, n in per_device.items():
                db.execute(update(Device).where(Device.id == device_id)
                           .values(errors_total=Device.errors_total + n))
            touched: set[int | None] = set()
            for device_id, reason, detail, at in recent[-(ERROR_LOG_PER_DEVICE * 20):]:
                if device_id is not None and device_id not in owners:
                    continue
                db.add(DeviceErrorLog(device_id=device_id, reason=reason, detail=detail, at=at))
                touched.add(device_id)
            db.flush()
            for device_id in touched:
                cond = DeviceErrorLog.device_id.is_(None) if device_id is None else DeviceErrorLog.device_id == device_id
                keep_from = db.scalar(select(DeviceErrorLog.id).where(cond).order_by(DeviceErrorLog.id.desc())
                                      .offset(ERROR_LOG_PER_DEVICE - 1).limit(1))
                if keep_from is not None:
                    db.execute(delete(DeviceErrorLog).where(cond, DeviceErrorLog.id < keep_from))

    # ---- device identity ---------------------------------------------------------------------

    def cached_token(self, token: str) -> DeviceRef | None:
        """The cached device for this token, without touching the database (None: not cached).
        Tokens seen before skip the SHA-256 (a bridge looks one up per message)."""
        ref = self._by_token.get(token)
        if ref is not None:
            return ref
        ref = self._token_cache.get(hash_token(token))
        if ref is not None:
            with self._cache_lock:
                if len(self._by_token) > 100_000:
                    self._by_token.clear()
                self._by_token[token] = ref
        return ref

    def resolve_token(self, token: str) -> DeviceRef | None:
        """The device holding this access token, or None if no device has it. A revoked token
        still resolves (revoked=True) so transports can tell "revoked" from "unknown"."""
        token_hash = hash_token(token)
        ref = self._token_cache.get(token_hash)
        if ref is not None:
            return ref
        now = time.monotonic()
        if self._negative_cache.get(token_hash, 0.0) > now:
            return None
        with self.database.session() as db:
            row = db.execute(select(Device.id, Device.enterprise_id, Device.name, Device.is_gateway,
                                    Device.token_revoked).where(Device.token_hash == token_hash)).first()
        if row is None:
            with self._cache_lock:
                if len(self._negative_cache) > 100_000:
                    self._negative_cache.clear()
                self._negative_cache[token_hash] = now + NEGATIVE_CACHE_S
            return None
        ref = DeviceRef(device_id=row.id, enterprise_id=row.enterprise_id, name=row.name,
                        is_gateway=row.is_gateway, revoked=row.token_revoked)
        if now - self._invalidated.get(ref.device_id, -1e9) > INVALIDATION_GRACE_S:
            with self._cache_lock:
                self._token_cache[token_hash] = ref
        return ref

    def invalidate_device(self, device_id: int) -> None:
        """Forgets every cached token of the device (after rotation, revocation, claim, delete)."""
        with self._cache_lock:
            self._by_token.clear()
            self._invalidated[device_id] = time.monotonic()
            for token_hash in [h for h, r in self._token_cache.items() if r.device_id == device_id]:
                del self._token_cache[token_hash]
            for key in [k for k, r in self._children.items() if r.device_id == device_id or k[0] == device_id]:
                del self._children[key]
            self._negative_cache.clear()

    def invalidate_token(self, token: str) -> None:
        with self._cache_lock:
            self._by_token.pop(token, None)
            self._token_cache.pop(hash_token(token), None)
            self._negative_cache.pop(hash_token(token), None)

    def _on_credentials_event(self, event: Event) -> None:
        device_id = event.data.get("device_id")
        if isinstance(device_id, int):
            self.invalidate_device(device_id)

    def ensure_child_device(self, gateway: DeviceRef, name: str, device_type: str = "default") -> DeviceRef:
        """The gateway's child device called `name`, created under the gateway's enterprise the
        first time the gateway mentions it (ThingsBoard's gateway API does the same). A device of
        that name already in the enterprise is adopted as the child."""
        key = (gateway.device_id, name)
        ref = self._children.get(key)
        if ref is not None:
            return ref
        if gateway.enterprise_id is None:
            raise ValueError("an unclaimed gateway cannot create devices")
        with self.database.session() as db:
            device = db.scalar(select(Device).where(Device.enterprise_id == gateway.enterprise_id,
                                                    Device.name == name))
            if device is None:
                device = Device(enterprise_id=gateway.enterprise_id, name=name, type=device_type[:100] or "default",
                                gateway_id=gateway.device_id, label="")
                db.add(device)
                try:
                    db.flush()
                except IntegrityError:  # created concurrently by another worker
                    db.rollback()
                    device = db.scalar(select(Device).where(Device.enterprise_id == gateway.enterprise_id,
                                                            Device.name == name))
                    if device is None:
                        raise
                log.info("gateway %s created child device %s (%s)", gateway.device_id, device.id, name)
            elif device.gateway_id is None and device.token_hash is None:
                device.gateway_id = gateway.device_id
            ref = DeviceRef(device_id=device.id, enterprise_id=device.enterprise_id, name=device.name)
        with self._cache_lock:
            self._children[key] = ref
        return ref

    # ---- attributes from devices ------------------------------------------------------------

    def save_client_attributes(self, device: DeviceRef, values: Mapping[str, Any]) -> None:
        """Stores attributes a device reported about itself (blocking; run it in a thread)."""
        if not values:
            return
        with self.database.session() as db:
            upsert_attributes(db, device_id=device.device_id, scope=AttributeScope.client, values=values)
        self.note_activity(device.device_id, "attributes")

    def read_attributes(self, device: DeviceRef, *, client_keys: Sequence[str] | None,
                        shared_keys: Sequence[str] | None) -> dict[str, dict[str, Any]]:
        """ThingsBoard's attribute request answer: {"client": {...}, "shared": {...}}; no keys
        asked at all → every key of both scopes."""
        with self.database.session() as db:
            rows = db.execute(select(DeviceAttribute.scope, DeviceAttribute.key, DeviceAttribute.value)
                              .where(DeviceAttribute.device_id == device.device_id,
                                     DeviceAttribute.scope.in_([AttributeScope.client, AttributeScope.shared]))).all()
        out: dict[str, dict[str, Any]] = {"client": {}, "shared": {}}
        if not client_keys and not shared_keys:
            wanted: dict[str, set[str] | None] = {"client": None, "shared": None}
        else:  # asking for some keys of one scope asks for nothing of the other, as ThingsBoard does
            wanted = {"client": set(client_keys or ()), "shared": set(shared_keys or ())}
        for scope, key, value in rows:
            name = scope.value if hasattr(scope, "value") else str(scope)
            keys = wanted[name]
            if keys is None or key in keys:
                out[name][key] = value
        return out

    # ---- server-side RPC ------------------------------------------------------------------

    async def call_rpc(self, *, enterprise_id: int, device_id: int, method: str, params: Any,
                       timeout_s: float) -> Any:
        """Sends an RPC to the device (event rpc.<ent>.<dev> with {"id","method","params"}, which
        the MQTT transport forwards on v1/devices/me/rpc/request/{id}) and waits for its answer.
        Raises TimeoutError when the device does not answer in time."""
        request_id = next(self._rpc_ids)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._rpc_waiters[(device_id, request_id)] = (loop, future)
        try:
            self.events.publish(f"rpc.{enterprise_id}.{device_id}",
                                {"id": request_id, "method": method, "params": params,
                                 "device_id": device_id, "timeout_ms": int(timeout_s * 1000)})
            return await asyncio.wait_for(future, timeout_s)
        finally:
            self._rpc_waiters.pop((device_id, request_id), None)

    def next_rpc_id(self) -> int:
        """A request id for a one-way RPC (no answer awaited), unique in this process."""
        return next(self._rpc_ids)

    def rpc_response(self, device_id: int, request_id: int, response: Any) -> bool:
        """Delivers a device's answer to a waiting call_rpc(); safe from any thread. False when
        nobody waits for it (timed out already, or unknown id)."""
        waiter = self._rpc_waiters.get((device_id, request_id))
        if waiter is None:
            return False
        loop, future = waiter
        try:
            loop.call_soon_threadsafe(_resolve_value, future, response)
        except RuntimeError:
            return False
        self.note_activity(device_id, "rpc")
        return True

    def _on_rpc_response_event(self, event: Event) -> None:
        data = event.data
        device_id, request_id = data.get("device_id"), data.get("id")
        if isinstance(device_id, int) and isinstance(request_id, int):
            self.rpc_response(device_id, request_id, data.get("response"))


# What a submitter on an event loop waits with: submit()'s future or submit_nowait()'s callback.
_Waiter = asyncio.Future[None] | Callable[[BaseException | None], None]


def _wake(waiters: Sequence[_Waiter], error: BaseException | None, space: asyncio.Event | None) -> None:
    """On the submitters' loop: resolves their futures, calls their callbacks (in the order
    they were submitted) and wakes submitters waiting for room."""
    for waiter in waiters:
        if isinstance(waiter, asyncio.Future):
            _resolve(waiter, error)
            continue
        try:
            waiter(error)
        except Exception:  # one submitter's bug must not keep the others waiting
            log.exception("an ingest submitter's callback failed")
    if space is not None:
        space.set()


def _resolve(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _resolve_value(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def upsert_attributes(db: Any, *, device_id: int, scope: AttributeScope, values: Mapping[str, Any]) -> None:
    """Sets attributes of one scope (insert or update by key); the caller owns the transaction."""
    existing = {a.key: a for a in db.scalars(select(DeviceAttribute).where(
        DeviceAttribute.device_id == device_id, DeviceAttribute.scope == scope,
        DeviceAttribute.key.in_(list(values)))).all()}
    now = utcnow()
    for key, value in values.items():
        row = existing.get(key)
        if row is None:
            db.add(DeviceAttribute(device_id=device_id, scope=scope, key=key, value=value, updated_at=now))
        else:
            row.value = value
            row.updated_at = now
    db.flush()


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)
