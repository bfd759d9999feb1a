"""End to end: `rlmf up --no-broker` against a broker that outlives it (a Kafka of the user's
own; here the tansu broker started on its own by `rlmf broker`, in another process group).

The whole `up` process group is SIGKILLed while the broker keeps its topics; `up` restarts
without --fresh, and only the new bars are published (the old ones are still on the broker):
the services resume from their committed offsets, the account continues exactly, and
trading.decisions.v1, which survived too, holds each bar's decision once. The embedded
broker's restart (topics gone, the same file published again) is test_rlmf_up_stream's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from services.common.broker import free_port, port_open
from tests.e2e.test_rlmf_up import UP_PORTS
from tests.e2e.test_rlmf_up_stream import Up, _csv, _decisions
from tests.helpers import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

RLMF = Path(sys.executable).parent / "rlmf"
HISTORY, LIVE, NEW = 20, 10, 5


@pytest.fixture
def own_broker(workdir: Path) -> Iterator[str]:
    """`rlmf broker` in a session of its own: a SIGKILL of up's group does not reach it."""
    port = free_port()
    log = workdir / "broker.out"
    with log.open("wb") as out:
        broker = subprocess.Popen(
            [str(RLMF), "broker", "--port", str(port)], cwd=workdir, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_until(
            lambda: "broker ready" in log.read_text(errors="replace"),
            60, "the broker to start", process=broker, log=log,
        )  # fmt: skip
        yield f"127.0.0.1:{port}"
    finally:
        broker.send_signal(signal.SIGTERM)
        broker.wait(timeout=30)


def test_up_on_a_broker_that_survives_resumes_from_its_offsets_after_sigkill(
    workdir: Path, own_broker: str
) -> None:
    busy = [p for p in UP_PORTS if port_open("127.0.0.1", p)]
    if busy:
        pytest.skip(f"`rlmf up` needs its default ports; in use here: {busy}")
    env = {
        **os.environ,
        "RLMF_BUS_BOOTSTRAP": own_broker,
        "RLMF_BUS_GROUP_PROTOCOL": "manual",  # as `up` sets for the embedded broker
        "RLMF_TRAINER_TRAIN_DAYS": "2000",  # no cycle: this test is about the state alone
        "OMP_NUM_THREADS": "1",
        "RLMF_POLICY_TORCH_THREADS": "1",
    }
    first = _csv(workdir, "GOOGL.csv", "acme-1.csv", HISTORY + LIVE)
    up = Up(workdir, env, None, "up-1")
    try:
        up.rlmf("market", "publish", "--prices", str(first), "--ticker", "ACME",
                "--history", str(HISTORY), "--as-fast-as-possible")  # fmt: skip
        before = wait_until(
            lambda: (s := up.status())["tickers"].get("ACME", {}).get("decisions") == LIVE and s,
            300, "the live bars traded", interval_s=2, process=up.process,
        )  # fmt: skip
    finally:
        up.kill()

    up = Up(workdir, env, None, "up-2")
    try:
        resumed = up.status()["tickers"]["ACME"]
        assert resumed["decisions"] == LIVE
        assert resumed["net_worth"] == before["tickers"]["ACME"]["net_worth"]
        # Only the new bars: the old ones are still on the broker, behind the saved offsets.
        whole = pd.read_csv(_csv(workdir, "GOOGL.csv", "acme-all.csv", HISTORY + LIVE + NEW))
        new = workdir / "acme-new.csv"
        whole.iloc[HISTORY + LIVE :].to_csv(new, index=False)
        up.rlmf("market", "publish", "--prices", str(new), "--ticker", "ACME",
                "--as-fast-as-possible")  # fmt: skip
        wait_until(
            lambda: up.status()["tickers"]["ACME"]["decisions"] == LIVE + NEW,
            300, "the new bars traded after the restart", interval_s=2, process=up.process,
        )  # fmt: skip
        decisions = _decisions(own_broker, "ACME")
        assert len(decisions) == LIVE + NEW, "a bar traded twice, or one lost"
        times = [d.decision_time.ToDatetime() for d in decisions]
        assert len(set(times)) == LIVE + NEW
    finally:
        up.process.send_signal(signal.SIGINT)
        up.process.wait(timeout=90)
