"""Do two `make demo` runs agree? The determinism check of the demo: the same code and seed,
run twice (say, once on a quiet machine and once beside `make test`), must give the same
promotion decisions, the same students bit for bit and the same live-loop metrics.

    PYTHONPATH=. .venv/bin/python bench/compare_demos.py RUN_A/demo-out RUN_B/demo-out

Prints one JSON line: whether the promotions (every field but the artifact's path), the
students' weight files (sha256 from each artifact's manifest), the metrics, the accounting and
every event on the bus, message ids included (the demo's fingerprint.json), agree; what differs
where they do not; and each run's wall-clock seconds per stage (which are expected to differ).
Exits 1 when the runs disagree.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# Fields of a promotion record that name the run's own folder, not what was decided.
MOVING = {"artifact_path"}


def promotions(run: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in p.items() if k not in MOVING} for p in run["promotions"]]


def student_weights(out: Path, run: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Per student, the sha256 of each weights file its manifest lists."""
    found = {}
    for promotion in run["promotions"]:
        manifest = out / "models" / "policy" / promotion["student"] / "manifest.json"
        if manifest.is_file():
            files = json.loads(manifest.read_text())["files"]
            found[promotion["student"]] = {
                name: digest for name, digest in files.items() if name.endswith(".safetensors")
            }
    return found


def fingerprint(out: Path) -> dict[str, Any] | None:
    """Every event the run put on the bus (bars, watermarks, decisions with their
    probabilities, fills, snapshots, feedback, promotions) and the net worth per bar: the
    demo's fingerprint.json, the one bench/chaos.py compares runs by."""
    path = out / "fingerprint.json"
    return json.loads(path.read_text()) if path.is_file() else None


# Message ids derive from the replay's run id, which names the prices file by its content, so two
# clones give the same ids; the events apart from their ids tell a content difference from an
# id-only one when they do not.
ID_FIELDS = {"id", "decisionId"}


def without_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_ids(v) for k, v in value.items() if k not in ID_FIELDS}
    if isinstance(value, list):
        return [without_ids(v) for v in value]
    return value


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    """Paths at which two JSON values differ (at most a few per list)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}.{k}: only in one" for k in sorted(set(a) ^ set(b))]
        for k in sorted(set(a) & set(b)):
            out += differences(a[k], b[k], f"{where}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items against {len(b)}"]
        out = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            out += differences(x, y, f"{where}[{i}]")
        return out[:20]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def compare(out_a: Path, out_b: Path) -> dict[str, Any]:
    run_a = json.loads((out_a / "run.json").read_text())
    run_b = json.loads((out_b / "run.json").read_text())
    parts = {
        "promotions": (promotions(run_a), promotions(run_b)),
        "student_weights": (student_weights(out_a, run_a), student_weights(out_b, run_b)),
        "metrics": (run_a["metrics"], run_b["metrics"]),
        "accounting": (run_a.get("accounting"), run_b.get("accounting")),
        "events": (fingerprint(out_a), fingerprint(out_b)),
    }
    result: dict[str, Any] = {"bench": "compare_demos", "a": str(out_a), "b": str(out_b)}
    differ: dict[str, list[str]] = {}
    for name, (a, b) in parts.items():
        result[f"same_{name}"] = a == b
        if a != b:
            differ[name] = differences(a, b)
    result["same_events_apart_from_ids"] = without_ids(fingerprint(out_a)) == without_ids(
        fingerprint(out_b)
    )
    result["students_compared"] = len(parts["student_weights"][0])
    result["agree"] = not differ
    result["differences"] = differ
    result["stage_seconds"] = {"a": run_a.get("stage_seconds"), "b": run_b.get("stage_seconds")}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="the first run's demo-out folder")
    parser.add_argument("b", type=Path, help="the second run's demo-out folder")
    args = parser.parse_args()
    result = compare(args.a, args.b)
    print(json.dumps(result))
    sys.exit(0 if result["agree"] else 1)


if __name__ == "__main__":
    main()
