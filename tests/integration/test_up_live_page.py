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
    page = LivePage(state, port=free_port(), min_interval_s=1.0, refresh_s=3).start()
    try:
        yield page, state, live
    finally:
        page.stop()


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _figures(driver: Any, tickers: list[str]) -> dict[str, str] | None:
    """Every figure the page shows as text, read in one script so that one document answers
    them all; None when the page was reloading (its own timer), so the caller reads again.

    Reading element by element raced the reload: Chromium then answers with a stale element or
    with "Node with given id does not belong to the document", both WebDriverExceptions."""
    from selenium.common.exceptions import WebDriverException

    ids = ("running", "served-version", "shadow-version", "shadow-bars", "shadow-needed", "cycles")
    cells = ("bars", "decisions", "net-worth", "buy-and-hold", "last-bar")
    selectors = {name: f"#{name}" for name in ids}
    for ticker in tickers:
        row = f"tr[data-ticker='{ticker}']"
        selectors |= {f"{ticker} {cell}": f"{row} td.{cell}" for cell in cells}
    script = """
        if (document.readyState !== 'complete') return null;
        const shown = {};
        for (const [name, css] of Object.entries(arguments[0])) {
            const element = document.querySelector(css);
            if (element === null) return null;
            shown[name] = element.innerText.trim();
        }
        return shown;
    """
    try:
        shown = driver.execute_script(script, selectors)
    except WebDriverException:
        return None  # the reload replaced the document while the script ran: read again
    return dict(shown) if shown is not None else None


def _expected(status: dict[str, Any]) -> dict[str, str]:
    """The same figures from `rlmf status --json`'s object, as the page writes them."""
    shadow = status["shadow"]
    want = {
        "running": "running" if status["running"] else "stopped",
        "served-version": status["served"]["version"],
        "shadow-version": shadow["version"],
        "shadow-bars": str(shadow["bars"]),
        "shadow-needed": str(shadow["needed"]),
        "cycles": str(len(status["cycles"])),
    }
    for ticker, t in status["tickers"].items():
        want |= {
            f"{ticker} bars": str(t["bars"]),
            f"{ticker} decisions": str(t["decisions"]),
            f"{ticker} net-worth": _money(t["net_worth"]),
            f"{ticker} buy-and-hold": _money(t["buy_and_hold_net_worth"]),
            f"{ticker} last-bar": t["last_bar"],
        }
    return want


def _loaded_images(driver: Any) -> list[list[Any]] | None:
    """(alt, natural width) of every image once all have loaded; None before."""
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete ? i.naturalWidth : 0]);"
    )
    return images if images and all(width for _, width in images) else None


def _console_errors(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_the_live_page_shows_status_and_plots_and_follows_the_state(
    browser: Any, served: tuple[LivePage, StateDir, Any], tmp_path: Path
) -> None:
    page, state, live = served
    status = collect(state)
    tickers = sorted(status["tickers"])
    assert tickers == ["ACME", "BETA"] and status["shadow"] is not None
    browser.get(page.url)
    shown = wait_until(lambda: _figures(browser, tickers), 20, "the page's figures")
    assert shown == _expected(status)
    assert httpx.get(page.url + "status.json").json() == status
    images = wait_until(lambda: _loaded_images(browser), 20, "the page's plots")
    assert len(images) == 8 and all(width > 500 for _, width in images), images
    screenshot = tmp_path / "page.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 50_000
    if os.environ.get("RLMF_PAGE_SCREENSHOT"):
        shutil.copyfile(screenshot, os.environ["RLMF_PAGE_SCREENSHOT"])

    trade_more(state, live, 2)
    after = collect(state)
    assert after["tickers"]["ACME"]["decisions"] == status["tickers"]["ACME"]["decisions"] + 2
    # The page reloads itself (every 3 s here) and is made again from the new state.
    wait_until(
        lambda: _figures(browser, tickers) == _expected(after),
        30,
        "the page to show the new bars without a reload from the test",
    )
    assert _console_errors(browser) == []
