"""The rule engine with the database around it: rules loaded (and reloaded) from the alarm
tables, devices resolved, and each batch's condition changes written at once by an AlarmWriter.

The app runs this in the alarm child process (alarms/writer.py), beside the writes: evaluating
10,000 rules is Python work per point that, in the platform process, held the GIL the MQTT
broker's event loop needs (`ecoplat bench alarms` sampled the evaluator in over a quarter of
that process's samples). In the child it runs on the other core; the platform only ships the
points it accepted and publishes the events that come back. Tests and a database bound to one
connection run it in-process.

Evaluation and writes take turns, one batch at a time: a batch's changes are written before
the next batch is evaluated, so the alarms' order is the points' order, and an alarm event can
never overtake its row (it is built after the commit)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from ecoplat.alarms import service
from ecoplat.alarms.engine import ConditionChange, DeviceInfo, RuleEngine, RuleError, RuleSpec
from ecoplat.alarms.models import AlarmRule
from ecoplat.alarms.writer import AlarmWriter, Written
from ecoplat.db import Database
from ecoplat.telemetry.points import Point

log = logging.getLogger(__name__)


def merge(*parts: Written) -> Written:
    """One Written of several, in order."""
    out = Written()
    for part in parts:
        out.events.extend(part.events)
        out.outbox_rows += part.outbox_rows
    return out


class AlarmEvaluation:
    """A RuleEngine fed from the database, writing through `writer` (an AlarmWriter).
    Thread-safe: one operation at a time."""

    def __init__(self, database: Database, writer: AlarmWriter) -> None:
        self.database = database
        self.writer = writer
        self.engine = RuleEngine(device_resolver=self._resolve_device)
        self._lock = threading.Lock()

    # -- rules and devices ----------------------------------------------------------------------

    def load(self) -> None:
        """Every enabled rule (creating the ones device profiles call for), and the conditions
        the database says are active, so a recovered value clears them rather than opening
        second alarms."""
        with self.database.session() as db:
            created = service.instantiate_missing_profile_rules(db)
            if created:
                log.info("created %d alarm rules from device profile templates", created)
        with self.database.session() as db:
            specs = service.load_enabled_rules(db)
            active = service.open_active_alarms(db)
            devices = _devices_of(db, specs)
        with self._lock:
            for spec in specs:
                try:
                    self.engine.upsert_rule(spec)
                except RuleError as e:
                    log.error("alarm rule %s cannot be compiled and is skipped: %s", spec.id, e)
            self.engine.add_devices(devices)
            for rule_id, device_id in active:
                self.engine.restore_active(rule_id, device_id)
        log.info("alarm engine loaded %d rules, %d active alarms", self.engine.rule_count, len(active))

    def reload_rule(self, rule_id: int) -> None:
        """Recompiles one rule from the database (after its create, update or delete committed)."""
        with self.database.session() as db:
            rule = db.get(AlarmRule, rule_id)
            spec = service.rule_spec(rule) if rule is not None else None
            active = service.open_active_alarms(db, rule_id) if rule is not None else []
        with self._lock:
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

    def forget_device(self, device_id: int) -> None:
        self.engine.forget_device(device_id)

    def has_rule(self, rule_id: int) -> bool:
        return self.engine.has_rule(rule_id)

    def counts(self) -> tuple[int, int]:
        """(rules compiled, rule-device bindings)."""
        return self.engine.rule_count, self.engine.binding_count

    def _resolve_device(self, device_id: int) -> DeviceInfo | None:
        from ecoplat.connect.models import Device

        with self.database.session() as db:
            found = _device_infos(db, Device.id == device_id)
        return found[0] if found else None

    # -- points and time ------------------------------------------------------------------------

    def evaluate(self, points: Sequence[Point]) -> Written:
        """Evaluates a batch and writes the changes it caused; the Written (events to publish)."""
        with self._lock:
            return self._write(self.engine.evaluate(points))

    def tick(self, now_ms: int) -> Written:
        """Time passing: stale data, delays that ran out while devices were silent, and shelving
        that expired."""
        with self._lock:
            changed = self._write(self.engine.tick(now_ms))
            return merge(changed, self.writer.expire())

    def _write(self, changes: list[ConditionChange]) -> Written:
        if not changes:
            return Written()
        # The rules this engine holds spare the writer reading them (a retry there reads them).
        known_rules = {c.rule_id for c in changes if self.engine.has_rule(c.rule_id)}
        return self.writer.write(changes, known_rules)

    # -- what the writer does alone ---------------------------------------------------------------

    def write(self, changes: Sequence[ConditionChange], known_rules: set[int] | None = None) -> Written:
        with self._lock:
            return self.writer.write(changes, known_rules)

    def expire(self) -> Written:
        with self._lock:
            return self.writer.expire()

    def forget_channels(self, enterprise_id: int | None = None) -> None:
        self.writer.forget_channels(enterprise_id)

    def close(self) -> None:
        self.writer.close()


# Ids per IN (…) list: well under SQLite's limit on bound parameters.
_IN_CHUNK = 500


def _device_infos(db: Session, where: ColumnElement[bool]) -> list[DeviceInfo]:
    """The claimed devices that match `where`, as the engine knows them."""
    from ecoplat.connect.models import Device
    from ecoplat.tenancy.models import Equipment

    rows = db.execute(
        select(Device.id, Device.enterprise_id, Device.profile_id, Device.name, Equipment.site_id)
        .outerjoin(Equipment, Equipment.id == Device.equipment_id)
        .where(where, Device.enterprise_id.is_not(None)))
    return [DeviceInfo(id=r.id, enterprise_id=r.enterprise_id, profile_id=r.profile_id, name=r.name,
                       site_id=r.site_id) for r in rows]


def _devices_of(db: Session, specs: Sequence[RuleSpec]) -> list[DeviceInfo]:
    """The devices the rules apply to: those named by a device rule, and every device of a
    profile that has rules."""
    from ecoplat.connect.models import Device

    out: list[DeviceInfo] = []
    for column, ids in ((Device.id, sorted({s.device_id for s in specs if s.device_id is not None})),
                        (Device.profile_id, sorted({s.profile_id for s in specs if s.profile_id is not None}))):
        for i in range(0, len(ids), _IN_CHUNK):
            out += _device_infos(db, column.in_(ids[i:i + _IN_CHUNK]))
    return out
