"""Debian's Chromium for the page tests, launched the same way everywhere.

Assertions wait up to `EXPECT_TIMEOUT_MS`: Playwright's default of 5 s is shorter than a page
load takes on a loaded two-core CI machine running the suite on two workers beside the servers
under test, and a slow page is not a broken one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("ECOPLAT_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
EXPECT_TIMEOUT_MS = 20_000


def launch_chromium(playwright: Any) -> Any:
    """Chromium from `CHROMIUM`, failing with what to do when it is not installed."""
    from playwright.sync_api import expect

    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: run `make browser` (installs Debian's chromium) "
                    "or set ECOPLAT_TEST_CHROMIUM to a Chromium binary.", pytrace=False)
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
