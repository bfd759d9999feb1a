"""End to end: what `rlmf up` shows of the user's stream, and keeps across a SIGKILL.

`rlmf up --tiny` with the live page on its default port 8010; one ticker is published with
history. The simulator writes its ledger (rlmf-state/ledger/ACME.jsonl) as it trades; the live
page shows `rlmf status`'s figures and /status.json is its object. Then the whole process group
is SIGKILLed, `up` restarts and the same file is published again with new bars: the ledger holds
every traded bar once, agrees with the saved account, and `rlmf report` draws from it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common.broker import free_port, port_open
from tests.e2e.test_rlmf_up import UP_PORTS
from tests.e2e.test_rlmf_up_stream import Up, _csv
from tests.helpers import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

HISTORY, LIVE, MORE = 40, 10, 5


def _ledger(workdir: Path) -> list[dict[str, Any]]:
    path = workdir / "rlmf-state" / "ledger" / "ACME.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _traded(up: Up, decisions: int) -> dict[str, Any] | None:
    status = up.status()
    acme = status["tickers"].get("ACME")
    # The trainer's bar count too: the status is then still until the next publish.
    done = acme and acme["decisions"] == decisions and acme["bars"] == HISTORY + decisions
    return status if done else None


PAGE = "http://127.0.0.1:8010/"
"""`up`'s default live page."""


def test_up_keeps_a_ledger_serves_the_live_page_and_reports_after_sigkill(
    workdir: Path,
) -> None:
    busy = [p for p in [*UP_PORTS, 8010] if port_open("127.0.0.1", p)]
    if busy:
        pytest.skip(f"`rlmf up` needs its default ports; in use here: {busy}")
    first = _csv(workdir, "GOOGL.csv", "acme-1.csv", HISTORY + LIVE)
    full = _csv(workdir, "GOOGL.csv", "acme.csv", HISTORY + LIVE + MORE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RLMF_POLICY_TORCH_THREADS": "1"}
    up = Up(workdir, env, free_port(), "up-1")
    try:
        up.rlmf("market", "publish", "--prices", str(first), "--ticker", "ACME",
                "--history", str(HISTORY), "--as-fast-as-possible")  # fmt: skip
        status = wait_until(lambda: _traded(up, LIVE), 300, "the live bars traded", interval_s=2)
        assert len(_ledger(workdir)) == LIVE
        shown = httpx.get(PAGE, timeout=60)
        assert shown.status_code == 200 and "data-ticker='ACME'" in shown.text
        assert f"<td class='decisions'>{LIVE}</td>" in shown.text
        assert httpx.get(PAGE + "status.json", timeout=30).json() == up.status() == status
    finally:
        up.kill()

    up = Up(workdir, env, free_port(), "up-2")
    try:
        up.rlmf("market", "publish", "--prices", str(full), "--ticker", "ACME",
                "--history", str(HISTORY), "--as-fast-as-possible")  # fmt: skip
        status = wait_until(
            lambda: _traded(up, LIVE + MORE), 300, "the new bars traded", interval_s=2
        )
        rows = _ledger(workdir)
        times = [r["time"] for r in rows]
        assert len(times) == LIVE + MORE and times == sorted(set(times)), "a bar twice or lost"
        assert rows[-1]["net_worth"] == pytest.approx(status["tickers"]["ACME"]["net_worth"])
        assert rows[-1]["time"] == status["tickers"]["ACME"]["last_bar"]
        up.rlmf("report", "--out", str(workdir / "rlmf-report"))
        report = (workdir / "rlmf-report" / "report.html").read_text()
        assert "id='section-ACME'" in report and "<td>sentiment rule</td>" in report
    finally:
        up.kill()
