"""Gathering concurrent requests for one model into one forward pass.

Each request puts its locations on the model's queue and awaits its own rows. One task per
model takes the first waiting request, then more until `max_batch` locations are gathered or
`max_wait_ms` has passed, runs the predictor once on all of them in a worker thread (the event
loop keeps accepting requests meanwhile) and hands each request its slice. `max_batch=1` turns
batching off: one request, one forward pass.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch


class Batcher:
    """The queue and forward-pass loop of one predictor."""

    def __init__(self, predictor, max_batch: int, max_wait_ms: float) -> None:
        self.predictor = predictor
        self.max_batch = max(1, int(max_batch))
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000
        self.queue: asyncio.Queue = asyncio.Queue()
        # One thread: forward passes of one model run one after another, never interleaved.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
        self.task: asyncio.Task | None = None
        self.passes = 0

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The predictor's rows for `images` (uint8 `[N, 4, 3, S, S]`)."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((images, future))
        return await future

    async def _loop(self) -> None:
        while True:
            gathered = [await self.queue.get()]
            count = len(gathered[0][0])
            deadline = time.monotonic() + self.max_wait
            while count < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    item = (
                        self.queue.get_nowait()
                        if remaining <= 0
                        else await asyncio.wait_for(self.queue.get(), remaining)
                    )
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                if count + len(item[0]) > self.max_batch:
                    # Too many for this pass: it leads the next one.
                    await self._run(gathered)
                    gathered, count = [item], len(item[0])
                    deadline = time.monotonic() + self.max_wait
                    continue
                gathered.append(item)
                count += len(item[0])
            await self._run(gathered)

    async def _run(self, gathered: list) -> None:
        live = [(images, future) for images, future in gathered if not future.cancelled()]
        if not live:
            return
        batch = np.concatenate([images for images, _ in live])
        loop = asyncio.get_running_loop()
        try:
            rows = await loop.run_in_executor(
                self.executor, self.predictor.predict, torch.from_numpy(batch)
            )
        except Exception as exc:  # noqa: BLE001 - every waiting caller hears of it
            for _, future in live:
                if not future.done():
                    future.set_exception(exc)
            return
        self.passes += 1
        start = 0
        for images, future in live:
            end = start + len(images)
            if not future.done():
                future.set_result({key: value[start:end] for key, value in rows.items()})
            start = end
