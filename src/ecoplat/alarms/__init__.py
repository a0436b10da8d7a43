"""Alarm management (ISA-18.2 / IEC 62682): rules evaluated in the ingest path, the alarm life
cycle, notifications and KPIs.

What other domains may use: ``RuleSpec``/``compile_rule`` to check rule templates (e.g. the
knowledge graph's operating limits) and ``AlarmState`` for the states' names. Everything else goes
through ``ecoplat.alarms.service`` or the API."""

from ecoplat.alarms.engine import RuleError, RuleKind, RuleSpec, compile_rule
from ecoplat.alarms.state import AlarmState

__all__ = ["AlarmState", "RuleError", "RuleKind", "RuleSpec", "compile_rule"]
