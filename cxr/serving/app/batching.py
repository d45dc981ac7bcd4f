"""Requests that arrive together share one forward pass.

Every request's images go into one queue; a single worker takes what is queued, waits up to
`wait_s` for more while other requests are still being decoded (never when none is: a lone user
pays no wait), and runs the model once on up to `batch_size` images, on one model thread, so the
Keras model is never called from two threads at once. Grad-CAM runs on that same thread (`call`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

Predict = Callable[[Sequence[np.ndarray]], np.ndarray]


class Batcher:
    """`await batcher.probabilities(images)` from any number of concurrent requests."""

    def __init__(self, predict: Predict, batch_size: int, wait_s: float):
        self._predict, self.batch_size, self.wait_s = predict, batch_size, wait_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cxr-model")
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self.arriving = 0  # requests being read and decoded: images that may join the next batch
        self.passes: list[int] = []  # images per forward pass, newest last (kept short)

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._executor.shutdown(wait=True)

    @contextlib.contextmanager
    def arriving_request(self):
        """Around reading and decoding a request: the worker waits for it (within wait_s)."""
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1

    async def probabilities(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(len(images), pathologies), computed in a pass shared with whatever else is queued."""
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((list(images), future))
        return await future

    async def call(self, func: Callable[..., Any], *args) -> Any:
        """`func(*args)` on the model thread (between passes), e.g. Grad-CAM."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    async def _gather(self) -> list[tuple[list[np.ndarray], asyncio.Future]]:
        items = [await self._queue.get()]
        count = len(items[0][0])
        deadline = asyncio.get_running_loop().time() + self.wait_s
        while count < self.batch_size:
            if not self._queue.empty():
                items.append(self._queue.get_nowait())
            elif self.arriving and (left := deadline - asyncio.get_running_loop().time()) > 0:
                with contextlib.suppress(asyncio.TimeoutError):  # not TimeoutError before 3.11
                    items.append(await asyncio.wait_for(self._queue.get(), min(left, 0.001)))
                continue
            else:
                break
            count += len(items[-1][0])
        return items

    async def _run(self) -> None:
        while True:
            items = await self._gather()
            images = [image for batch, _ in items for image in batch]
            self.passes = [*self.passes[-99:], len(images)]
            try:
                scores = await self.call(self._predict, images)
            except Exception as err:  # the model failed: every waiting request hears why
                for _, future in items:
                    if not future.done():
                        future.set_exception(err)
                continue
            start = 0
            for batch, future in items:
                if not future.done():  # a client that went away
                    future.set_result(scores[start : start + len(batch)])
                start += len(batch)
