"""Chaos: `rlmf demo --quick` once without a kill, then once per service with that service
SIGKILLed at a bar drawn from a seed; each run's decisions, fills, snapshots, net-worth series,
feedback, promotions and message accounting must equal the run without a kill. Prints one JSON
line.

    .venv/bin/python bench/chaos.py [--services sentiment,features,policy,simulator,trainer]
                                    [--seed 0] [--out /tmp/rlmf-chaos]

Six quick demos take about 10 minutes on 2 cores (about 100 s each), as long as the rest of
`make test` (about 11 minutes): this bench runs them, and tests/e2e/test_chaos.py keeps one
fast representative kill in the suite. `ingest` is not in the list (the demo publishes its
news itself); tests/integration/test_ingest_chaos.py SIGKILLs the ingest process mid-stream at
seeded points and checks the restart publishes the same events.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from services.demo.chaos import differences

REPO = Path(__file__).resolve().parents[1]
SERVICES = ("sentiment", "features", "policy", "simulator", "trainer")


def progress(msg: str) -> None:
    print(f"[bench/chaos] {msg}", file=sys.stderr, flush=True)


def demo(out: Path, kill: str | None, seed: int) -> dict[str, Any]:
    """One quick demo on its own embedded broker; its exit code, time and fingerprint."""
    argv = [sys.executable, "-m", "services.cli", "demo", "--quick", "--out", str(out)]
    if kill:
        argv += ["--kill-service", kill, "--kill-seed", str(seed)]
    started = time.monotonic()
    with (out.parent / f"{out.name}.log").open("w") as log:
        proc = subprocess.run(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=False)
    run: dict[str, Any] = {"service": kill, "exit": proc.returncode}
    run["seconds"] = round(time.monotonic() - started, 1)
    fingerprint = out / "fingerprint.json"
    run["fingerprint"] = json.loads(fingerprint.read_text()) if fingerprint.exists() else None
    killed = out / "run.json"
    if kill and killed.exists():
        run["killed"] = json.loads(killed.read_text()).get("killed", [])
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", default=",".join(SERVICES))
    parser.add_argument("--seed", type=int, default=0, help="kill bars are drawn from seed + i")
    parser.add_argument("--out", type=Path, default=Path("/tmp/rlmf-chaos"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    progress("baseline: a quick demo without a kill")
    baseline = demo(args.out / "baseline", None, args.seed)
    if baseline["exit"] != 0 or baseline["fingerprint"] is None:
        print(json.dumps({"bench": "chaos", "error": "the baseline demo failed", **baseline}))
        return 1
    runs = []
    for i, service in enumerate(args.services.split(",")):
        progress(f"{service}: SIGKILL at a bar drawn from seed {args.seed + i}")
        run = demo(args.out / f"kill-{service}", service, args.seed + i)
        got = run.pop("fingerprint")
        found = (
            ["no fingerprint: the demo failed"]
            if got is None
            else differences(got, baseline["fingerprint"])
        )
        after = [k["after_bars"] for k in run.pop("killed", [])]
        runs.append({**run, "killed_after_bars": after, "equal": not found, "differences": found})
        progress(f"{service}: {found or 'equal'}")
    result = {
        "bench": "chaos",
        "bars": len(baseline["fingerprint"]["net_worth"]),
        "baseline_seconds": baseline["seconds"],
        "runs": runs,
        "all_equal": all(r["equal"] and r["exit"] == 0 for r in runs),
    }
    print(json.dumps(result))
    return 0 if result["all_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
