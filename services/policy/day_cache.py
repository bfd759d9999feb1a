"""The day cache: the frozen layers' output for one market day, computed once and reused.

A prompt is `prefix + day part + tail` (services/policy/prompt.py). Attention is causal, so
the frozen lower layers' hidden states for the prefix and the day part do not depend on the
tail, and the tail is one of a few (the coarse portfolio line). One entry per day therefore
holds everything the trainable top layers ever need for that day: the day part's hidden
states at the split, and each possible tail's. Every episode, PPO epoch, cycle, market-feedback
record and the gate's evaluation of teacher and student (they share the frozen base) reuse it.

Keys are (base sha256, day sha256): the base's hash covers the frozen layers' weights, the
split and the tokenizer's output for the prefix, and the day's hash covers the day part's
token ids (the day text as this base's tokenizer reads it). An entry made by another base is
refused, never silently used. The store is bounded: an LRU in memory under a byte cap, and
optionally a folder of safetensors files, one per entry, named by the key, that the policy
server fills while it serves and a trainer on the same machine reads.

Written here because no library caches partial transformer states keyed by content like this
(transformers' caches hold one sequence's keys/values for generation, not reusable per-day
hidden states across models that share a frozen base).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

DEFAULT_MEMORY_CAP_BYTES = 1 << 30


class DayCacheError(RuntimeError):
    """A key or a file from another base, or a file that does not read back."""


@dataclass(frozen=True)
class DayKey:
    base_sha: str
    day_sha: str

    @property
    def file_name(self) -> str:
        return f"{self.base_sha[:16]}-{self.day_sha}.safetensors"


def day_sha(day_token_ids: list[int]) -> str:
    return hashlib.sha256(json.dumps(day_token_ids).encode()).hexdigest()


@dataclass
class DayEntry:
    """The split-layer hidden states of one day part [n, H], and of each tail after it."""

    day_hidden: torch.Tensor
    tail_hidden: dict[tuple[int, ...], torch.Tensor] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        tensors = [self.day_hidden, *self.tail_hidden.values()]
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class CacheStats:
    hits: int = 0
    disk_hits: int = 0
    misses: int = 0


class DayCache:
    """Entries for one frozen base, bounded in memory, optionally backed by a folder."""

    def __init__(
        self,
        base_sha: str,
        memory_cap_bytes: int = DEFAULT_MEMORY_CAP_BYTES,
        folder: str | Path | None = None,
    ) -> None:
        self.base_sha = base_sha
        self.memory_cap_bytes = memory_cap_bytes
        self.folder = Path(folder) if folder is not None else None
        self._entries: OrderedDict[DayKey, DayEntry] = OrderedDict()
        self._bytes = 0
        self.stats = CacheStats()

    def key(self, day_token_ids: list[int]) -> DayKey:
        return DayKey(self.base_sha, day_sha(day_token_ids))

    def _check(self, key: DayKey) -> None:
        if key.base_sha != self.base_sha:
            raise DayCacheError(
                f"day-cache key from base {key.base_sha[:16]} used with base {self.base_sha[:16]}"
            )

    def get(self, key: DayKey) -> DayEntry | None:
        self._check(key)
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self.stats.hits += 1
            return entry
        entry = self._read(key)
        if entry is None:
            self.stats.misses += 1
            return None
        self.stats.disk_hits += 1
        self._remember(key, entry)
        return entry

    def put(self, key: DayKey, entry: DayEntry) -> None:
        self._check(key)
        self._remember(key, entry)
        self._write(key, entry)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def memory_bytes(self) -> int:
        return self._bytes

    def _remember(self, key: DayKey, entry: DayEntry) -> None:
        if key in self._entries:
            self._bytes -= self._entries.pop(key).nbytes
        self._entries[key] = entry
        self._bytes += entry.nbytes
        while self._bytes > self.memory_cap_bytes and len(self._entries) > 1:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.nbytes

    def _write(self, key: DayKey, entry: DayEntry) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        tails = list(entry.tail_hidden)
        tensors = {"day": entry.day_hidden.contiguous()}
        tensors.update(
            {f"tail_{i}": entry.tail_hidden[t].contiguous() for i, t in enumerate(tails)}
        )
        metadata = {"base_sha": key.base_sha, "day_sha": key.day_sha, "tails": json.dumps(tails)}
        path = self.folder / key.file_name
        partial = path.with_suffix(".partial")
        save_file(tensors, str(partial), metadata=metadata)
        partial.replace(path)  # readers (a trainer beside the server) never see half a file

    def _read(self, key: DayKey) -> DayEntry | None:
        if self.folder is None or not (path := self.folder / key.file_name).is_file():
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            tensors = load_file(str(path))
        except (OSError, SafetensorError) as exc:
            raise DayCacheError(f"day-cache file {path} does not read back: {exc}") from exc
        if metadata.get("base_sha") != key.base_sha or metadata.get("day_sha") != key.day_sha:
            raise DayCacheError(f"day-cache file {path} was written for another key")
        tails = [tuple(t) for t in json.loads(metadata["tails"])]
        return DayEntry(tensors["day"], {t: tensors[f"tail_{i}"] for i, t in enumerate(tails)})
