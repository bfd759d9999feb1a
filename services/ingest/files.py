"""File sources: JSONL (one object per line) and CSV (a header row), read as raw entries.

Lines are kept as bytes until parsed so that invalid UTF-8 is reported per line, and a bad line
goes to the DLQ with its original bytes while the lines around it pass.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

from services.ingest.pipeline import Entry


def read_entries(path: Path) -> Iterator[Entry]:
    """Entries of a .jsonl/.ndjson or .csv file; other suffixes are an error."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        yield from _jsonl(path)
    elif suffix == ".csv":
        yield from _csv(path)
    else:
        raise ValueError(f"{path}: unknown news file type {suffix!r}; use .jsonl or .csv")


def _jsonl(path: Path) -> Iterator[Entry]:
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():  # blank lines are layout, not items
                yield Entry(raw=line.rstrip(b"\r\n"), where=f"{path.name}:{number}")


def _csv(path: Path) -> Iterator[Entry]:
    # surrogateescape keeps undecodable bytes in the text so each row can be checked and its
    # original bytes recovered for the DLQ.
    text = path.read_bytes().decode("utf-8", "surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    for row in reader:
        where = f"{path.name}:{reader.line_num}"
        raw = json.dumps(row, ensure_ascii=False).encode("utf-8", "surrogateescape")
        if any(_has_surrogates(v) for v in row.values() if isinstance(v, str)):
            yield Entry(raw=raw, where=where)  # re-parsed from bytes: reported as invalid UTF-8
            continue
        record = {k: v for k, v in row.items() if k is not None and v not in (None, "")}
        yield Entry(raw=raw, record=record, where=where)


def _has_surrogates(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
