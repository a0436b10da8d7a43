"""The demo as a user meets it: two `ecoplat demo` processes side by side (own data dir, own
ports), and Debian's Chromium driven by Playwright signing in as the demo SME admin, switching
to Chinese, seeing its site tree, and switching back."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from tests.browser import launch_chromium
from tests.conftest import free_port

from ecoplat.demo import CREDENTIALS_FILE, DEMO_SME_ADMIN

pytestmark = [pytest.mark.browser, pytest.mark.slow]

@dataclass
class RunningDemo:
    url: str
    data_dir: Path
    proc: subprocess.Popen[str]
    output: str = ""

    def credentials(self) -> list[dict[str, str]]:
        return json.loads((self.data_dir / CREDENTIALS_FILE).read_text(encoding="utf-8"))

    def account(self, email: str) -> dict[str, str]:
        return next(r for r in self.credentials() if r["email"] == email)


def _start(data_dir: Path) -> tuple[subprocess.Popen[str], int]:
    port, mqtt_port = free_port(), free_port()
    env = dict(os.environ, ECOPLAT_LOG_JSON="true")
    for name in ("ECOPLAT_DATABASE_URL", "ECOPLAT_DATA_DIR", "ECOPLAT_PORT", "ECOPLAT_MQTT_PORT"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ecoplat.cli", "demo", "--data-dir", str(data_dir), "--port", str(port),
         "--mqtt-port", str(mqtt_port), "--no-simulate"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, port


def _wait_ready(url: str, proc: subprocess.Popen[str], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"`ecoplat demo` exited with {proc.returncode}:\n{out[-4000:]}", pytrace=False)
        try:
            if httpx.get(url + "/login", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    pytest.fail(f"`ecoplat demo` at {url} did not answer within {timeout_s} s", pytrace=False)


def _stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.terminate()
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RunningDemo]]:
    """Two demos started together, each with its own data dir, HTTP port and MQTT port."""
    root = tmp_path_factory.mktemp("demos")
    started = []
    for name in ("a", "b"):
        proc, port = _start(root / name)
        started.append(RunningDemo(url=f"http://127.0.0.1:{port}", data_dir=root / name, proc=proc))
    try:
        for demo in started:
            _wait_ready(demo.url, demo.proc)
        yield started
    finally:
        for demo in started:
            demo.output = _stop(demo.proc)


def test_two_demos_run_side_by_side_each_with_its_own_data(demos: list[RunningDemo]) -> None:
    a, b = demos
    assert a.url != b.url
    assert [r["email"] for r in a.credentials()] == [r["email"] for r in b.credentials()]
    # Passwords are generated per data dir: each demo signs in with its own, not the other's.
    assert a.account(DEMO_SME_ADMIN)["password"] != b.account(DEMO_SME_ADMIN)["password"]
    for demo, other in ((a, b), (b, a)):
        with httpx.Client(base_url=demo.url, timeout=30) as client:
            wrong = client.post("/login", data={"email": DEMO_SME_ADMIN,
                                                "password": other.account(DEMO_SME_ADMIN)["password"]})
            assert wrong.status_code == 401
            ok = client.post("/login", data={"email": DEMO_SME_ADMIN,
                                             "password": demo.account(DEMO_SME_ADMIN)["password"]})
            assert ok.status_code == 303, ok.text[:500]
            page = client.get("/enterprise", follow_redirects=True)
            assert page.status_code == 200 and "Weifang plant" in page.text
            assert client.get("/api/health").status_code == 200


def test_sme_admin_signs_in_switches_language_and_sees_site_tree(demos: list[RunningDemo]) -> None:
    from playwright.sync_api import expect, sync_playwright

    demo = demos[0]
    account = demo.account(DEMO_SME_ADMIN)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            context = browser.new_context(locale="en-US")
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.goto(demo.url + "/enterprise")
            # Not signed in: sent to the login page, which brings us back afterwards.
            expect(page).to_have_url(demo.url + "/login?next=/enterprise")
            page.get_by_label("E-mail").fill(account["email"])
            page.get_by_label("Password").fill(account["password"])
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("heading", name="Huaxin Salt Chemical Co.")).to_be_visible()
            tree = page.locator("#site-tree")
            expect(tree.get_by_text("Weifang plant")).to_be_visible()
            for area in ("Electrolysis", "Chlorine liquefaction", "Storage"):
                expect(tree.locator(".area > details > summary .name", has_text=area)).to_be_visible()
            expect(tree.get_by_text("Membrane cell room line 1")).to_be_visible()
            expect(tree.get_by_text("Membrane electrolyzer E-101")).to_be_visible()

            # Collapse an area: its line disappears; expand again: it is back.
            electrolysis = tree.locator(".area > details > summary", has_text="Electrolysis")
            electrolysis.click()
            expect(tree.get_by_text("Membrane cell room line 1")).to_be_hidden()
            electrolysis.click()
            expect(tree.get_by_text("Membrane cell room line 1")).to_be_visible()

            # Switch to Chinese: labels, navigation and counts speak it.
            page.locator("[data-testid=lang-switch] button", has_text="中文").click()
            expect(page.get_by_role("heading", name="厂区结构")).to_be_visible()
            expect(page.locator("nav.nav").get_by_role("link", name="概览")).to_be_visible()
            expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
            expect(tree.get_by_text("3 个区域 · 3 条产线 · 3 个工位", exact=False)).to_be_visible()
            expect(tree.locator(".line > details > summary .name", has_text="Membrane cell room line 1")).to_be_visible()

            # The overview in Chinese, with its ECharts charts drawn.
            page.locator("nav.nav").get_by_role("link", name="概览").click()
            expect(page.get_by_role("heading", name="生态概览")).to_be_visible()
            expect(page.get_by_role("heading", name="氯碱产业生态")).to_be_visible()
            expect(page.locator("#chart-size[data-rendered=true] canvas")).to_have_count(1)
            expect(page.locator("#chart-country[data-rendered=true] canvas")).to_have_count(1)

            # The choice is remembered on the user: a new browser session signs in to Chinese.
            fresh = browser.new_context(locale="en-US").new_page()
            fresh.goto(demo.url + "/login?next=/enterprise")
            fresh.get_by_label("E-mail").fill(account["email"])
            fresh.get_by_label("Password").fill(account["password"])
            fresh.get_by_role("button", name="Sign in").click()
            expect(fresh.get_by_role("heading", name="厂区结构")).to_be_visible()

            # The audit log filters in place (HTMX swaps the results, the URL follows).
            page.goto(demo.url + "/audit")
            page.evaluate("window.__not_reloaded = true")
            page.locator("#entity_type").select_option("area")
            expect(page).to_have_url(re.compile(r"/audit\?.*entity_type=area"))
            expect(page.locator("#audit-events tbody tr[data-event-id]")).to_have_count(3)
            assert page.evaluate("window.__not_reloaded === true")

            # And back to English.
            page.goto(demo.url + "/enterprise")
            page.locator("[data-testid=lang-switch] button", has_text="English").click()
            expect(page.get_by_role("heading", name="Site tree")).to_be_visible()
            expect(page.locator("html")).to_have_attribute("lang", "en")
        finally:
            browser.close()


def test_demo_prints_its_url_and_every_account(demos: list[RunningDemo]) -> None:
    # Runs last in this module: stops the second demo to read everything it printed.
    demo = demos[1]
    demo.output = _stop(demo.proc)
    assert demo.url in demo.output
    for row in demo.credentials():
        assert row["email"] in demo.output and row["password"] in demo.output
    assert "demo SME admin" in demo.output
