"""The alarm console in Debian's Chromium (Playwright): the platform runs for real (uvicorn,
ingest pipeline, alarm runtime); a point that crosses a limit shows up in the open console by
itself (SSE from the event bus), the operator acknowledges it with the button, and when the
value recovers the alarm leaves the list of open alarms, live."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from tests.browser import launch_chromium

from ecoplat.config import Settings
from ecoplat.db import Database
from ecoplat.migrations_runner import upgrade
from ecoplat.telemetry.points import Point

from .builders import SECRET, Plant, make_plant, make_rule
from .conftest import free_port, new_database_url

pytestmark = [pytest.mark.browser]

@dataclass
class Served:
    url: str
    app: Any
    plant: Plant


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The platform on the embedded default (SQLite), once: the browser part does not depend on
    the database backend, which the other alarm tests cover on both."""
    from ecoplat.app import create_app

    tmp = tmp_path_factory.mktemp("alarms-browser")
    url = new_database_url("sqlite", tmp)
    upgrade(url)
    database = Database(url)
    with database.session() as db:
        plant = make_plant(db, devices=("E-101",))
        make_rule(db, plant.enterprise_id, device_id=plant.device_id("E-101"), key="temp_c",
                  params={"limit": 90.0, "unit": "Cel"}, priority=1, deadband=1.0,
                  message_template="{device} catholyte {value} {unit} above {limit}")
    port = free_port()
    settings = Settings(data_dir=tmp / "var", database_url=url, secret_key=SECRET, log_json=False,
                        mqtt_enabled=False, port=port, ingest_batch_max_ms=5)
    app = create_app(settings, database=database)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/login", timeout=2).status_code == 200 and getattr(app.state, "alarms", None):
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    yield Served(base, app, plant)
    server.should_exit = True
    thread.join(15)
    database.dispose()


def _ingest(served: Served, value: float) -> None:
    point = Point(served.plant.device_id("E-101"), "temp_c", int(time.time() * 1000), value)
    served.app.state.ingest.submit_blocking([point], enterprise_id=served.plant.enterprise_id)


def test_console_updates_live_and_operator_acknowledges_from_the_page(served: Served) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            context = browser.new_context()
            context.add_cookies([{"name": "ecoplat_access", "value": served.plant.people["operator"].token,
                                  "url": served.url}])
            page = context.new_page()
            page.goto(served.url + "/alarms")
            page.wait_for_selector("#alarm-rows tr.empty")
            page.wait_for_selector("#alarm-live[data-connected='true']", timeout=10_000)
            _ingest(served, 95.5)
            row = page.wait_for_selector("#alarm-rows tr[data-state='unacknowledged']", timeout=15_000)
            assert row is not None and "E-101 catholyte 95.5 Cel above 90.0" in row.inner_text()
            # The banner counts it too, without a reload, and so does every page loaded afterwards.
            page.wait_for_selector("#alarm-banner[data-count='1']", timeout=10_000)
            assert page.inner_text("#alarm-banner") == "1 unacknowledged alarm"
            page.reload()
            assert page.inner_text("#alarm-banner") == "1 unacknowledged alarm"
            page.wait_for_selector("#alarm-live[data-connected='true']", timeout=10_000)
            page.click("#alarm-rows button[data-action='ack']")
            page.wait_for_selector("#alarm-rows tr[data-state='acknowledged']", timeout=10_000)
            assert page.query_selector("#alarm-rows button[data-action='ack']") is None
            # Nothing is left unacknowledged: the banner goes, live.
            page.wait_for_selector("#alarm-banner", state="detached", timeout=10_000)
            # The value recovers: the acknowledged alarm returns to normal and leaves the open list.
            _ingest(served, 80.0)
            page.wait_for_selector("#alarm-rows tr.empty", timeout=15_000)
            page.goto(served.url + "/alarms/kpis")
            page.wait_for_selector("#chart-rate[data-rendered='true']", timeout=15_000)
            assert page.inner_text("[data-kpi='annunciations']") == "1"
        finally:
            browser.close()
