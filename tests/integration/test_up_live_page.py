"""The live page of `rlmf up` (services/up/page.py) in a real headless Chromium (Debian's
chromium and chromium-driver, driven by selenium): it shows `rlmf status`'s figures, its plots
load, /status.json is `rlmf status --json`, the console stays clean, and the page follows the
state folder by itself as bars are traded.

The state folder is written by the services' own writers (tests/up_state_run.py). Without
chromium the test skips, except under CI (CI=true), where .ci/run installs it and a missing
browser is a failure. RLMF_PAGE_SCREENSHOT=docs/up-live-page.png keeps the page's screenshot
(the one docs/demo.md shows).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common.broker import free_port
from services.common.up_state import StateDir
from services.up.page import LivePage
from services.up.status import collect
from tests.helpers import wait_until
from tests.up_state_run import trade_more, write_up_state

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def _require_browser() -> None:
    """Skip when Chromium, its driver or selenium is missing, except under CI."""
    parts = {
        CHROMIUM: ("apt-get install chromium", Path(CHROMIUM).is_file()),
        CHROMEDRIVER: ("apt-get install chromium-driver", Path(CHROMEDRIVER).is_file()),
        "selenium": ("pip install -e '.[test]'", importlib.util.find_spec("selenium") is not None),
    }
    missing = [f"{name} ({how})" for name, (how, there) in parts.items() if not there]
    if not missing:
        return
    reason = f"the live page test needs {'; '.join(missing)}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; under CI it must be there (.ci/run installs it)")
    pytest.skip(reason)


@pytest.fixture
def browser() -> Iterator[Any]:
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)  # no-sandbox: the test may run as root in a container
    options.add_argument("--window-size=1200,2000")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[LivePage, StateDir, Any]]:
    state, live = write_up_state(tmp_path / "rlmf-state")
    page = LivePage(state, port=free_port(), min_interval_s=1.0, refresh_s=2).start()
    try:
        yield page, state, live
    finally:
        page.stop()


def _text(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _shown(driver: Any, ticker: str) -> dict[str, str]:
    row = f"tr[data-ticker='{ticker}']"
    cells = ("bars", "decisions", "net-worth", "buy-and-hold", "last-bar")
    return {cell: _text(driver, f"{row} td.{cell}") for cell in cells}


def _expected(status: dict[str, Any], ticker: str) -> dict[str, str]:
    t = status["tickers"][ticker]
    return {
        "bars": str(t["bars"]),
        "decisions": str(t["decisions"]),
        "net-worth": _money(t["net_worth"]),
        "buy-and-hold": _money(t["buy_and_hold_net_worth"]),
        "last-bar": t["last_bar"],
    }


def _assert_figures_match(driver: Any, status: dict[str, Any]) -> None:
    assert _text(driver, "#running") == ("running" if status["running"] else "stopped")
    assert _text(driver, "#served-version") == status["served"]["version"]
    assert status["tickers"], "the state folder has tickers to compare"
    for ticker in status["tickers"]:
        assert _shown(driver, ticker) == _expected(status, ticker)
    shadow = status["shadow"]
    assert _text(driver, "#shadow-version") == shadow["version"]
    assert _text(driver, "#shadow-bars") == str(shadow["bars"])
    assert _text(driver, "#shadow-needed") == str(shadow["needed"])
    assert _text(driver, "#cycles") == str(len(status["cycles"]))


def _decisions_while_reloading(driver: Any, ticker: str) -> str | None:
    """The ticker's decisions on the page; None while the page is between two loads."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return _text(driver, f"tr[data-ticker='{ticker}'] td.decisions")
    except (NoSuchElementException, StaleElementReferenceException):
        return None  # the reload replaced the document while we read it: look again


def _console_errors(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_the_live_page_shows_status_and_plots_and_follows_the_state(
    browser: Any, served: tuple[LivePage, StateDir, Any], tmp_path: Path
) -> None:
    page, state, live = served
    browser.get(page.url)
    _assert_figures_match(browser, collect(state))
    assert httpx.get(page.url + "status.json").json() == collect(state)
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth]);"
    )
    assert len(images) == 8 and all(width > 500 for _, width in images), images
    screenshot = tmp_path / "page.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 50_000
    if os.environ.get("RLMF_PAGE_SCREENSHOT"):
        shutil.copyfile(screenshot, os.environ["RLMF_PAGE_SCREENSHOT"])

    before = collect(state)["tickers"]["ACME"]["decisions"]
    trade_more(state, live, 2)
    # The page reloads itself (every 2 s here) and is made again from the new state.
    wait_until(
        lambda: _decisions_while_reloading(browser, "ACME") == str(before + 2),
        30,
        "the page to show the two new decisions without a reload from the test",
    )
    _assert_figures_match(browser, collect(state))
    assert _console_errors(browser) == []
