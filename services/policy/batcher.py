"""Micro-batching: concurrent requests join one forward pass, up to max_batch states or max_wait.

Hand-written on asyncio because KServe 0.21's Python server has no request batcher of its own
(batching there is a separate agent container, not available in-process on localhost).
One worker thread runs the model, so batches never run concurrently and torch gets all cores.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

S = TypeVar("S")
R = TypeVar("R")


@dataclass
class _Pending(Generic[S, R]):
    items: list[S]
    key: object
    future: asyncio.Future[list[R]] = field(repr=False)


class MicroBatcher(Generic[S, R]):
    """`await submit(items, key)` -> results for items; requests with the same key may share a
    batch. `run(items, key)` is called on the worker thread and must return one result per item."""

    def __init__(
        self, run: Callable[[list[S], object], list[R]], max_batch: int, max_wait_s: float
    ) -> None:
        self.run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: asyncio.Queue[_Pending[S, R]] | None = None
        self._carry: _Pending[S, R] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="policy-batch")

    async def submit(self, items: list[S], key: object = None) -> list[R]:
        if self._worker is None or self._worker.done():
            # Created lazily: the queue and task must belong to the server's running loop.
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._work(), name="policy-batcher")
        assert self._queue is not None
        future: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(items, key, future))
        return await future

    async def _next(self) -> _Pending[S, R]:
        if self._carry is not None:
            pending, self._carry = self._carry, None
            return pending
        assert self._queue is not None
        return await self._queue.get()

    async def _collect(self) -> list[_Pending[S, R]]:
        """The first waiting request, plus any that arrive within max_wait and fit."""
        first = await self._next()
        batch, size = [first], len(first.items)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        assert self._queue is not None
        while size < self.max_batch:
            timeout = deadline - loop.time()
            if timeout <= 0:
                break
            try:
                item = await asyncio.wait_for(self._queue.get(), timeout)
            except TimeoutError:
                break
            if item.key != first.key or size + len(item.items) > self.max_batch:
                self._carry = item  # starts the next batch, keeping arrival order
                break
            batch.append(item)
            size += len(item.items)
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            items = [x for pending in batch for x in pending.items]
            try:
                results = await loop.run_in_executor(self._executor, self.run, items, batch[0].key)
                if len(results) != len(items):
                    raise RuntimeError(
                        f"batch run returned {len(results)} results for {len(items)}"
                    )
            except Exception as exc:  # every waiting request gets the error; the worker goes on
                log.exception("micro-batch of %d failed", len(items))
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                continue
            start = 0
            for pending in batch:
                end = start + len(pending.items)
                if not pending.future.done():
                    pending.future.set_result(results[start:end])
                start = end

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
