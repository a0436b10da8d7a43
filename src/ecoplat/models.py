"""Imports every domain's models so that Alembic and the tests see all tables."""

from __future__ import annotations

import importlib
import importlib.util

DOMAINS_WITH_MODELS = ["tenancy", "connect", "connect.gateways", "telemetry", "alarms"]


def load_all_models() -> None:
    for domain in DOMAINS_WITH_MODELS:
        name = f"ecoplat.{domain}.models"
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)
