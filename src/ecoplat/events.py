"""One event bus interface. In-process by default; Redis pub/sub when several processes must see
the same events (ECOPLAT_EVENTS_URL=redis://…).

Topics are dotted names, e.g. 'telemetry.<device_id>', 'alarm.<enterprise_id>'. Subscribers give
a prefix; an empty prefix receives everything. publish() may be called from any thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Event:
    topic: str
    data: dict[str, Any]


@dataclass(eq=False)
class _Subscriber:
    prefix: str
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Event]
    dropped: int = 0


@dataclass(eq=False)
class _Listener:
    prefix: str
    fn: Callable[[Event], None]


@dataclass
class EventBus:
    """In-process bus. Async subscribers get a bounded queue (a slow page drops, never blocks the
    publisher); sync listeners run inline in the publisher's thread and must be quick."""

    queue_size: int = 1000
    _subs: list[_Subscriber] = field(default_factory=list)
    _listeners: list[_Listener] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        self._deliver_local(Event(topic, data))

    def interested(self, topic: str) -> bool:
        """Whether anyone here may want events on `topic` or below it: publishers of costly
        events ask first and skip building what nobody would receive."""
        with self._lock:
            prefixes = [s.prefix for s in self._subs] + [x.prefix for x in self._listeners]
        return any(p.startswith(topic) or topic.startswith(p) for p in prefixes)

    def _deliver_local(self, event: Event) -> None:
        with self._lock:
            subs = list(self._subs)
            listeners = list(self._listeners)
        for listener in listeners:
            if event.topic.startswith(listener.prefix):
                try:
                    listener.fn(event)
                except Exception:
                    log.exception("event listener failed on %s", event.topic)
        for sub in subs:
            if event.topic.startswith(sub.prefix):
                try:
                    sub.loop.call_soon_threadsafe(self._put, sub, event)
                except RuntimeError:  # loop closed
                    self._remove(sub)

    @staticmethod
    def _put(sub: _Subscriber, event: Event) -> None:
        try:
            sub.queue.put_nowait(event)
        except asyncio.QueueFull:
            sub.dropped += 1

    def _remove(self, sub: _Subscriber) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._subs.remove(sub)

    def add_listener(self, prefix: str, fn: Callable[[Event], None]) -> Callable[[], None]:
        """Calls fn(event) synchronously for each event under prefix; returns an unsubscribe function."""
        listener = _Listener(prefix, fn)
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return remove

    async def subscribe(self, prefix: str = "") -> AsyncIterator[Event]:
        sub = _Subscriber(prefix, asyncio.get_running_loop(), asyncio.Queue(self.queue_size))
        with self._lock:
            self._subs.append(sub)
        try:
            while True:
                yield await sub.queue.get()
        finally:
            self._remove(sub)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class RedisEventBus(EventBus):
    """Publishes through Redis pub/sub so every process's subscribers see every event."""

    def __init__(self, url: str, channel: str = "ecoplat.events", **kw: Any) -> None:
        super().__init__(**kw)
        import redis

        self._url = url
        self._channel = channel
        self._redis = redis.Redis.from_url(url)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def interested(self, topic: str) -> bool:
        return True  # other processes may listen

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        self._redis.publish(self._channel, orjson.dumps({"topic": topic, "data": data}))

    async def start(self) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self._channel)

        def run() -> None:
            while not self._stop.is_set():
                msg = pubsub.get_message(timeout=0.5)
                if msg and msg.get("type") == "message":
                    try:
                        raw = orjson.loads(msg["data"])
                        self._deliver_local(Event(raw["topic"], raw["data"]))
                    except Exception:
                        log.exception("bad event on %s", self._channel)
            pubsub.close()

        self._thread = threading.Thread(target=run, name="ecoplat-events", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._thread:
            await asyncio.to_thread(self._thread.join, 2)


def make_event_bus(url: str | None) -> EventBus:
    if url and url.startswith("redis"):
        return RedisEventBus(url)
    return EventBus()
