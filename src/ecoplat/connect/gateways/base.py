"""The connector capability: a base class every gateway connector derives from, the registry of
connector types (the `ecoplat.connectors` entry points), and the coordinator that keeps one live
connection running, turning client errors into a clear "unavailable" state with retry backoff.

A connector instance belongs to one configured row (one tenant, one device); nothing about a
tenant's configuration lives on a shared object."""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cache
from importlib.metadata import entry_points
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ecoplat.errors import Unprocessable
from ecoplat.telemetry.points import Point, Value

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "ecoplat.connectors"

# Telemetry keys follow the ThingsBoard convention: short names without spaces or slashes.
KEY_PATTERN = r"^[A-Za-z0-9_.\-]{1,100}$"


class ConnectorState(enum.StrEnum):
    stopped = "stopped"  # disabled, or the platform is not running it
    starting = "starting"  # connecting
    online = "online"  # connected and delivering values
    unavailable = "unavailable"  # the last attempt failed; retrying after a backoff


class ConnectorSettings(BaseModel):
    """Settings every connector type shares: how patiently to reconnect after a failure."""

    model_config = ConfigDict(extra="forbid")

    retry_min_s: float = Field(default=1.0, gt=0, le=3600,
                               description="First wait after a failure; doubles on each further failure.")
    retry_max_s: float = Field(default=60.0, gt=0, le=3600, description="Longest wait between attempts.")


ConfigT = TypeVar("ConfigT", bound=ConnectorSettings)


@dataclass(slots=True)
class ConnectorStatus:
    state: ConnectorState = ConnectorState.stopped
    last_error: str | None = None
    last_error_at: datetime | None = None
    last_success_at: datetime | None = None
    connected_at: datetime | None = None
    points_total: int = 0
    rejects_total: int = 0
    failures_in_a_row: int = 0
    retry_in_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at.isoformat() if self.last_error_at else None,
            "last_success_at": self.last_success_at.isoformat() if self.last_success_at else None,
            "connected_at": self.connected_at.isoformat() if self.connected_at else None,
            "points_total": self.points_total,
            "rejects_total": self.rejects_total,
            "failures_in_a_row": self.failures_in_a_row,
            "retry_in_s": self.retry_in_s,
        }


PointSink = Callable[[list[Point]], Awaitable[None]]
RejectSink = Callable[[str, str], None]  # (reason, detail)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def plain_value(raw: Any) -> Value | None:
    """A reading as a telemetry value, or None when it cannot be one (NaN/Inf, arrays, blobs)."""
    if isinstance(raw, bool | str):
        return raw
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float):
        return raw if math.isfinite(raw) else None
    return None


class ConnectorSession:
    """What a running connector talks to: where its points go, where rejects are counted, and
    how it reports that the connection is up. One per connection attempt."""

    def __init__(self, *, sink: PointSink, reject: RejectSink, on_connected: Callable[[], None],
                 on_delivered: Callable[[int], None]) -> None:
        self._sink = sink
        self._reject = reject
        self._on_connected = on_connected
        self._on_delivered = on_delivered

    def connected(self) -> None:
        self._on_connected()

    async def publish(self, points: list[Point]) -> None:
        if not points:
            return
        await self._sink(points)
        self._on_delivered(len(points))

    def reject(self, reason: str, detail: str) -> None:
        self._reject(reason, detail)


class Connector(ABC, Generic[ConfigT]):
    """A kind of gateway to legacy equipment. Subclasses set `type_name`, `title` and
    `config_model`, and implement `run`, which connects, calls `session.connected()`, then
    publishes points until the connection fails (by raising) or the task is cancelled."""

    type_name: ClassVar[str]
    title: ClassVar[str]
    config_model: ClassVar[type[ConnectorSettings]]

    def __init__(self, *, config: ConfigT, device_id: int) -> None:
        self.config = config
        self.device_id = device_id

    @classmethod
    def validate_config(cls, raw: dict[str, Any]) -> ConfigT:
        """The validated configuration, or 422 naming each bad field under `config.`."""
        try:
            return cls.config_model.model_validate(raw)  # type: ignore[return-value]
        except ValidationError as e:
            errors = [{"field": "config." + ".".join(str(p) for p in err["loc"]),
                       "message": err["msg"], "type": err["type"]} for err in e.errors()]
            first = errors[0]
            raise Unprocessable(f"{first['field']}: {first['message']}", errors=errors) from e

    @abstractmethod
    async def run(self, session: ConnectorSession) -> None:
        """Connect and deliver values until the connection fails (raise) or is cancelled."""


@cache
def connector_types() -> dict[str, type[Connector[Any]]]:
    """Connector types installed as `ecoplat.connectors` entry points, by name (loaded once)."""
    found: dict[str, type[Connector[Any]]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception:
            # One broken plug-in must not take the others down; it is logged and left out.
            log.exception("connector entry point %s could not be loaded", ep.value)
            continue
        if isinstance(cls, type) and issubclass(cls, Connector):
            found[ep.name] = cls
        else:
            log.error("entry point %s is not a Connector subclass", ep.value)
    return found


def connector_type(name: str) -> type[Connector[Any]]:
    types = connector_types()
    if name not in types:
        raise Unprocessable(f"type: unknown connector type '{name}'; installed: {', '.join(sorted(types))}.",
                            errors=[{"field": "type", "message": "unknown connector type", "type": "enum"}])
    return types[name]


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Exponential backoff with jitter (so many connectors to one dead server do not retry in step)."""

    min_s: float
    max_s: float
    jitter: float = 0.2

    def delay(self, failures_in_a_row: int, rng: random.Random | None = None) -> float:
        base = min(self.max_s, self.min_s * (2 ** max(0, failures_in_a_row - 1)))
        spread = base * self.jitter
        r = (rng or random).uniform(-spread, spread)
        return max(min(self.min_s, self.max_s) * 0.5, min(self.max_s, base + r))


StatusListener = Callable[[ConnectorStatus], None]


@dataclass(eq=False)
class Coordinator:
    """Keeps one live connection running: connects, lets the connector deliver, and when the
    client fails records the error, goes "unavailable" and retries after a growing wait."""

    connector: Connector[Any]
    sink: PointSink
    reject: RejectSink = field(default=lambda reason, detail: None)
    on_status: StatusListener | None = None
    status: ConnectorStatus = field(default_factory=ConnectorStatus)
    _task: asyncio.Task[None] | None = None

    def _emit(self, **changes: Any) -> None:
        self.status = replace(self.status, **changes)
        if self.on_status is not None:
            try:
                self.on_status(self.status)
            except Exception:
                log.exception("connector status listener failed")

    def _connected(self) -> None:
        now = datetime.now(UTC)
        self._emit(state=ConnectorState.online, connected_at=now, failures_in_a_row=0, retry_in_s=None)

    def _delivered(self, n: int) -> None:
        # Not emitted to the listener each time: last_success_at is read from `status` and
        # persisted by the manager at its own pace.
        self.status.points_total += n
        self.status.last_success_at = datetime.now(UTC)
        if self.status.state is not ConnectorState.online:
            self._emit(state=ConnectorState.online, failures_in_a_row=0, retry_in_s=None)

    def _rejected(self, reason: str, detail: str) -> None:
        self.status.rejects_total += 1
        self.reject(reason, detail)

    async def run_forever(self) -> None:
        settings: ConnectorSettings = self.connector.config
        backoff = Backoff(min_s=settings.retry_min_s, max_s=settings.retry_max_s)
        session = ConnectorSession(sink=self.sink, reject=self._rejected,
                                   on_connected=self._connected, on_delivered=self._delivered)
        while True:
            self._emit(state=ConnectorState.starting, retry_in_s=None)
            try:
                await self.connector.run(session)
                error = "the connection ended"
            except asyncio.CancelledError:
                raise
            except Exception as e:  # every client error becomes the "unavailable" state
                error = describe_error(e)
                log.info("connector %s for device %s unavailable: %s", self.connector.type_name,
                         self.connector.device_id, error)
            failures = self.status.failures_in_a_row + 1
            delay = backoff.delay(failures)
            self._emit(state=ConnectorState.unavailable, last_error=error,
                       last_error_at=datetime.now(UTC), failures_in_a_row=failures,
                       retry_in_s=round(delay, 3))
            await asyncio.sleep(delay)

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run_forever(),
                                             name=f"connector-{self.connector.type_name}-{self.connector.device_id}")
        return self._task

    async def stop(self, timeout_s: float = 5.0) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # Bounded: a client library that swallows the cancellation must not hang shutdown.
            done, _ = await asyncio.wait({task}, timeout=timeout_s)
            if not done:
                log.warning("connector %s for device %s did not stop within %s s", self.connector.type_name,
                            self.connector.device_id, timeout_s)
            elif not task.cancelled() and task.exception() is not None:
                log.debug("connector task ended with %r", task.exception())
        self._emit(state=ConnectorState.stopped, retry_in_s=None)


def describe_error(e: BaseException) -> str:
    """A one-line error a person can act on (the client libraries often raise bare messages)."""
    text = str(e).strip()
    if isinstance(e, TimeoutError | asyncio.TimeoutError) and not text:
        text = "no answer before the timeout"
    if isinstance(e, ConnectionRefusedError) or "Connect call failed" in text:
        text = f"connection refused ({text})" if text else "connection refused"
    name = type(e).__name__
    return f"{name}: {text}" if text else name

