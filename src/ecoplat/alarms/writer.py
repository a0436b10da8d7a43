"""The alarm writer: batches of condition changes become alarms, transitions and outbox rows,
one transaction per batch, and the alarm events to publish once it has committed.

The app runs it, with the rule engine that feeds it (alarms/evaluation.py), in a child
process of its own (ecoplat.childproc, `python -m ecoplat.alarms.writer FD`); tests and a
database bound to one connection run both in-process. In the platform process every write
(reading the open alarms, the ISA-18.2 state machine, building rows and events, SQLite's
statements and commit) and every evaluation held the GIL that the MQTT broker's event loop
needs: `ecoplat bench alarms` sampled the alarm writer thread in about a third of the samples
and the evaluator in over a quarter, and every point queued behind them. With both in the
child, the platform's alarm thread only sends the accepted points and waits without the GIL;
what comes back is the events, built after the child's commit, which it publishes on the bus.

Correctness does not depend on where it runs: operator actions (acknowledge, shelve) commit in
the API's sessions, and the write reads the open alarms it changes under SQLite's write lock
(in the child it plans under the lock; in-process it plans first and checks under the lock) or,
on PostgreSQL, with SELECT … FOR UPDATE (service.apply_condition_changes)."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ecoplat.alarms import service
from ecoplat.alarms.engine import ConditionChange
from ecoplat.childproc import WorkerProcess, serve
from ecoplat.db import Database
from ecoplat.telemetry.points import Frames, Point

log = logging.getLogger(__name__)

ATTEMPTS = 3
# The wait for SQLite's write lock: polled this often, given up after (as the busy timeout
# every connection has).
LOCK_POLL_S = 0.0005
LOCK_TIMEOUT_S = 30.0


@dataclass
class Written:
    """What a committed write gives the platform: the events to publish, in order, and how
    many notifications it queued in the outbox (the dispatcher is woken only for those)."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    outbox_rows: int = 0


class AlarmWriter:
    """Writes in this process, on `database`; keeps the enabled channels per enterprise.

    `alone`: this process does nothing else (the child), so the SQLite write lock is taken
    before planning rather than after (service.apply_condition_changes, plan_under_lock)."""

    def __init__(self, database: Database, *, alone: bool = False) -> None:
        self.database = database
        self.alone = alone
        self.channels = service.ChannelCache()

    def write(self, changes: Sequence[ConditionChange], known_rules: set[int] | None = None) -> Written:
        """One transaction for the batch, tried up to ATTEMPTS times; raises the last error.

        The first try trusts the caller's `known_rules` (the rules its engine holds; None reads
        them) and the channel cache; a retry, e.g. after a rule deleted meanwhile failed the
        foreign key, reads both from the database."""
        for attempt in range(ATTEMPTS):
            first = attempt == 0
            work = partial(self._apply, changes, channels=self.channels if first else None,
                           known_rules=known_rules if first else None)
            try:
                return self._transaction(work)
            except Exception:
                if attempt == ATTEMPTS - 1:
                    raise
                log.warning("writing %d alarm changes failed (attempt %d); retrying", len(changes), attempt + 1,
                            exc_info=True)
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def _apply(self, changes: Sequence[ConditionChange], db: Any, *, channels: service.ChannelSource | None,
               known_rules: set[int] | None) -> None:
        lock = (lambda: take_sqlite_write_lock(db)) if self.database.is_sqlite else None
        service.apply_condition_changes(db, changes, lock=lock, channels=channels, known_rules=known_rules,
                                        plan_under_lock=self.alone)

    def expire(self) -> Written:
        """Returns shelved alarms whose expiry has passed (service.expire_shelving)."""
        return self._transaction(lambda db: service.expire_shelving(db))

    def forget_channels(self, enterprise_id: int | None = None) -> None:
        self.channels.forget(enterprise_id)

    def close(self) -> None:
        pass

    def _transaction(self, work: Callable[[Any], Any]) -> Written:
        with self.database.session() as db:
            work(db)
            pending = service.take_pending_events(db)
            outbox_rows = service.outbox_rows_written(db)
        # Committed (the session commits as the block ends, or raises): the events are on record.
        return Written(events=service.built_events(pending), outbox_rows=outbox_rows)


def take_sqlite_write_lock(db: Any) -> None:
    """Takes SQLite's write lock (BEGIN IMMEDIATE) for the alarm write; the open alarms are
    checked under it, so no operator action commits between that check and the write
    (PostgreSQL gets the same from SELECT … FOR UPDATE).

    The lock is polled every half millisecond rather than left to SQLite's busy handler,
    which sleeps 1, 2, 5, 10 … 100 ms between tries: the ingest writer holds the lock for a
    few to tens of milliseconds per batch and takes it again soon after, and each of those
    sleeps could overshoot the gap by as much as it lasted."""
    conn = service.driver_connection(db)  # sqlite3's own: three statements through SQLAlchemy cost more
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
            time.sleep(LOCK_POLL_S)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(LOCK_TIMEOUT_S * 1000)}")


class ProcessAlarmWriter:
    """The alarm writer and the rule engine (alarms/evaluation.py) in a child process on the
    database at `url`: the operations of an AlarmEvaluation. A child that dies fails the call
    in progress (WorkerProcessError); the next starts anew, loading the rules and the active
    conditions from the database as a restarted platform does."""

    def __init__(self, url: str) -> None:
        # The app goes on starting while the child imports (seconds): the first write waits.
        self._worker = WorkerProcess("ecoplat.alarms.writer", url, name="alarm writer", wait=False)

    @property
    def pid(self) -> int | None:
        return self._worker.pid

    @property
    def restarts(self) -> int:
        return self._worker.restarts

    def wait_ready(self) -> None:
        self._worker.wait_ready()

    def write(self, changes: Sequence[ConditionChange], known_rules: set[int] | None = None) -> Written:
        return self._worker.call("write", list(changes), known_rules)  # type: ignore[no-any-return]

    def expire(self) -> Written:
        return self._worker.call("expire")  # type: ignore[no-any-return]

    def forget_channels(self, enterprise_id: int | None = None) -> None:
        self._worker.call("forget_channels", enterprise_id)

    # -- the rule engine, which lives in the child too (alarms/evaluation.py) -------------------
    def evaluate(self, points: Sequence[Point]) -> Written:
        # Frames travel as their frames (no Point per value); anything else as plain Points.
        if type(points) is Frames:
            return self._worker.call("evaluate", points.frames, None)  # type: ignore[no-any-return]
        return self._worker.call("evaluate", None, list(points))  # type: ignore[no-any-return]

    def tick(self, now_ms: int) -> Written:
        return self._worker.call("tick", now_ms)  # type: ignore[no-any-return]

    def reload_rule(self, rule_id: int) -> None:
        self._worker.call("reload_rule", rule_id)

    def forget_device(self, device_id: int) -> None:
        self._worker.call("forget_device", device_id)

    def has_rule(self, rule_id: int) -> bool:
        return bool(self._worker.call("has_rule", rule_id))

    def counts(self) -> tuple[int, int]:
        """(rules compiled, rule-device bindings) in the child's engine."""
        return self._worker.call("counts")  # type: ignore[no-any-return]

    def cpu_seconds(self) -> float:
        """CPU time the current child has used (the benchmark adds it to the platform's)."""
        return float(self._worker.call("cpu_seconds"))

    def heap_stats(self) -> dict[str, Any]:
        """What the child's cycle collector did (heap.stats)."""
        return self._worker.call("heap_stats")  # type: ignore[no-any-return]

    def close(self) -> None:
        self._worker.close()


class _Handler:
    """The child's side: the rule engine and an AlarmWriter on a Database of its own."""

    def __init__(self, url: str) -> None:
        from ecoplat.alarms.evaluation import AlarmEvaluation
        from ecoplat.models import load_all_models

        load_all_models()  # the alarm tables' foreign keys name other domains' tables
        self.database = Database(url)
        self.evaluation = AlarmEvaluation(self.database, AlarmWriter(self.database, alone=True))
        self.evaluation.load()

    def handle(self, op: str, args: tuple[Any, ...]) -> Any:
        if op == "evaluate":
            frames, points = args
            return self.evaluation.evaluate(Frames(frames) if frames is not None else points)
        if op in _OPS:
            return getattr(self.evaluation, op)(*args)
        raise ValueError(f"the alarm writer has no operation {op!r}")

    def close(self) -> None:
        self.database.dispose()


_OPS = frozenset(("tick", "write", "expire", "forget_channels", "reload_rule", "forget_device", "has_rule",
                  "counts"))


if __name__ == "__main__":
    # The handler from the module by its name, not from __main__: the Written it returns must
    # unpickle in the parent as ecoplat.alarms.writer.Written.
    from ecoplat.alarms.writer import _Handler as Handler

    serve(Handler, name="alarm writer")
