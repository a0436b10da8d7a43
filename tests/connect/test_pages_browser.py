"""The device page in real Chromium against a real uvicorn server: history drawn by ECharts from
the REST API, then new values arriving live over SSE while a device posts over HTTP."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select, update
from tests.browser import launch_chromium
from tests.connect.conftest import seed

from ecoplat.connect.models import Device


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
        # The status counters are written just after the points are acknowledged: wait for
        # them, then make the device quiet for an hour so the page opens showing it offline.
        deadline = time.monotonic() + 10
        while True:
            with database.session() as s:
                if s.scalar(select(Device.points_total).where(Device.id == device_id)) == 5:
                    break
            assert time.monotonic() < deadline, "device status counters not written"
            time.sleep(0.02)
        with database.session() as s:
            s.execute(update(Device).where(Device.id == device_id)
                      .values(last_seen_at=datetime.now(UTC) - timedelta(hours=1)))
        with sync_playwright() as p:
            browser = launch_chromium(p)
            try:
                context = browser.new_context()
                context.add_cookies([{"name": "ecoplat_access", "value": tenant.user_token,
                                      "url": base}])
                page = context.new_page()
                page.goto(f"{base}/devices/{device_id}")
                chart = page.locator("#live-chart")
                assert page.locator("#device-status").text_content().strip() == "offline"
                page.wait_for_function("document.getElementById('live-chart').dataset.points === '5'", timeout=15000)
                assert chart.locator("canvas").count() >= 1
                page.wait_for_function("document.getElementById('live-chart').dataset.live === 'true'", timeout=15000)
                r = http.post(f"/api/v1/{token}/telemetry", json={"current_ka": 15.25, "cell_voltage_v": 3.12})
                assert r.status_code == 200
                page.wait_for_function("document.getElementById('live-chart').dataset.points === '7'", timeout=15000)
                row = page.locator('#latest-values tr[data-key="cell_voltage_v"] .v')
                assert row.text_content() == "3.12"
                assert page.locator('#latest-values tr[data-key="current_ka"] .v').text_content() == "15.25"
                assert page.locator("#device-status").text_content().strip() == "online"
            finally:
                browser.close()
