"""The micro-batcher joins concurrent requests into one run and keeps each request's results."""

from __future__ import annotations

import asyncio
import threading

from services.policy.batcher import MicroBatcher


def test_concurrent_requests_share_batches_and_get_their_own_results() -> None:
    runs: list[list[int]] = []
    lock = threading.Lock()

    def run(items: list[int], key: object) -> list[int]:
        with lock:
            runs.append(list(items))
        return [x * 10 for x in items]

    async def main() -> list[list[int]]:
        batcher: MicroBatcher[int, int] = MicroBatcher(run, max_batch=4, max_wait_s=0.2)
        try:
            return await asyncio.gather(*(batcher.submit([i, i + 100]) for i in range(6)))
        finally:
            batcher.close()

    results = asyncio.run(main())
    assert results == [[i * 10, (i + 100) * 10] for i in range(6)]
    assert all(len(r) <= 4 for r in runs)
    assert len(runs) < 6  # some requests really were batched together
    assert sorted(x for r in runs for x in r) == sorted(x for i in range(6) for x in (i, i + 100))


def test_a_failing_batch_fails_its_requests_and_the_worker_goes_on() -> None:
    def run(items: list[int], key: object) -> list[int]:
        if key == "bad":
            raise ValueError("boom")
        return items

    async def main() -> tuple[BaseException | list[int], list[int]]:
        batcher: MicroBatcher[int, int] = MicroBatcher(run, max_batch=8, max_wait_s=0.01)
        try:
            bad = await asyncio.gather(batcher.submit([1], "bad"), return_exceptions=True)
            good = await batcher.submit([2], "good")
            return bad[0], good
        finally:
            batcher.close()

    bad, good = asyncio.run(main())
    assert isinstance(bad, ValueError) and good == [2]


def test_requests_with_different_keys_never_share_a_batch() -> None:
    seen: list[tuple[object, int]] = []

    def run(items: list[int], key: object) -> list[int]:
        seen.append((key, len(items)))
        assert all((x % 2 == 0) == key for x in items), f"{items} mixed into a {key} batch"
        return items

    async def main() -> None:
        batcher: MicroBatcher[int, int] = MicroBatcher(run, max_batch=8, max_wait_s=0.1)
        try:
            await asyncio.gather(*(batcher.submit([i], i % 2 == 0) for i in range(4)))
        finally:
            batcher.close()

    asyncio.run(main())
    assert sum(n for _, n in seen) == 4 and {k for k, _ in seen} == {True, False}
