"""The device page in real Chromium against a real uvicorn server: history drawn by ECharts from
the REST API, then new values arriving live over SSE while a device posts over HTTP."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from tests.conftest import free_port
from tests.connect.builders import SECRET
from tests.connect.conftest import seed

from ecoplat.app import create_app
from ecoplat.config import Settings
from ecoplat.db import Database

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture
def server(fresh_database_url: str, tmp_path: Path) -> Iterator[tuple[str, Database]]:
    settings = Settings(data_dir=tmp_path / "var", database_url=fresh_database_url, secret_key=SECRET,
                        mqtt_enabled=False, log_json=False, ingest_batch_max_ms=5)
    database = Database(fresh_database_url)
    port = free_port()
    config = uvicorn.Config(create_app(settings, database=database), host="127.0.0.1", port=port,
                            log_level="warning", lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", database
    srv.should_exit = True
    thread.join(10)
    database.dispose()


@pytest.mark.browser
def test_live_chart_shows_history_and_values_arriving_over_sse(server):
    from playwright.sync_api import sync_playwright

    base, database = server
    tenant = seed(database, "E-101 electrolyzer")
    device_id, token = tenant.devices["E-101 electrolyzer"]
    now = int(time.time() * 1000)
    with httpx.Client(base_url=base, timeout=10) as http:
        for i in range(5):
            r = http.post(f"/api/v1/{token}/telemetry", json={"ts": now - (5 - i) * 1000,
                                                              "values": {"current_ka": 14.0 + i / 10}})
            assert r.status_code == 200
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            try:
                context = browser.new_context()
                context.add_cookies([{"name": "ecoplat_access", "value": tenant.user_token,
                                      "url": base}])
                page = context.new_page()
                page.goto(f"{base}/devices/{device_id}")
                chart = page.locator("#live-chart")
                page.wait_for_function("document.getElementById('live-chart').dataset.points === '5'", timeout=15000)
                assert chart.locator("canvas").count() >= 1
                page.wait_for_function("document.getElementById('live-chart').dataset.live === 'true'", timeout=15000)
                r = http.post(f"/api/v1/{token}/telemetry", json={"current_ka": 15.25, "cell_voltage_v": 3.12})
                assert r.status_code == 200
                page.wait_for_function("document.getElementById('live-chart').dataset.points === '7'", timeout=15000)
                row = page.locator('#latest-values tr[data-key="cell_voltage_v"] .v')
                assert row.text_content() == "3.12"
                assert page.locator('#latest-values tr[data-key="current_ka"] .v').text_content() == "15.25"
            finally:
                browser.close()
