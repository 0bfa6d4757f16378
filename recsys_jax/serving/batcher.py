"""Micro-batching for a server: concurrent requests -> one call of a batch function, on one worker thread.

``batcher = MicroBatcher(process, max_batch=32, max_wait_ms=2.0, max_queue=256)``; inside the event
loop ``await batcher.start()``, then ``result = await batcher.submit(payload)`` from each request.
The loop takes the first waiting request, waits up to ``max_wait_ms`` for more (or until
``max_batch`` are waiting), and runs ``process(payloads) -> results`` (one result, or an exception
instance, per payload) on its worker thread, so the event loop keeps accepting requests meanwhile.
At most ``max_queue`` requests wait; one more raises :class:`Overloaded` at once (a server answers
503) instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class Overloaded(RuntimeError):
    """The queue of waiting requests is full."""


class MicroBatcher:
    def __init__(self, process: Callable[[list], Sequence[Any]], *, max_batch: int = 32, max_wait_ms: float = 2.0,
                 max_queue: int = 256):
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError(f"need max_batch >= 1, max_queue >= 1, max_wait_ms >= 0; got {max_batch}, "
                             f"{max_queue}, {max_wait_ms}")
        self.process, self.max_batch, self.max_queue = process, int(max_batch), int(max_queue)
        self.max_wait = max_wait_ms / 1000.0
        self._waiting: collections.deque = collections.deque()
        self._event: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="microbatch")
        self.batches = 0  # batches run so far (for /healthz and tests)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    async def start(self) -> None:
        self._event = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._waiting:
            _, fut = self._waiting.popleft()
            if not fut.done():
                fut.set_exception(Overloaded("the server is shutting down"))
        self._executor.shutdown(wait=True)

    async def submit(self, payload: Any) -> Any:
        if self._event is None:
            raise RuntimeError("MicroBatcher.start() was not awaited")
        if len(self._waiting) >= self.max_queue:
            raise Overloaded(f"{len(self._waiting)} requests are already waiting (max_queue={self.max_queue})")
        fut = asyncio.get_running_loop().create_future()
        self._waiting.append((payload, fut))
        self._event.set()
        return await fut

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._waiting:
                self._event.clear()
                await self._event.wait()
            deadline = loop.time() + self.max_wait
            while len(self._waiting) < self.max_batch and (left := deadline - loop.time()) > 0:
                self._event.clear()
                try:
                    await asyncio.wait_for(self._event.wait(), left)
                except TimeoutError:
                    break
            batch = [self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))]
            batch = [(p, f) for p, f in batch if not f.done()]  # a client that went away
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self.process, [p for p, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} requests")
            except Exception as e:  # noqa: BLE001  (a failed batch fails its requests, never the server)
                results = [e] * len(batch)
            self.batches += 1
            for (_, fut), res in zip(batch, results):
                if fut.done():
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)
