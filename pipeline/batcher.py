"""Dynamic batching: requests queue up; each engine instance takes the next batch.

The rule, exactly: an idle engine instance opens a batch with the oldest queued request and takes the next
queued requests, in order, while their images fit in `batch_size`. If the batch is still short of
`batch_size`, it waits for more, up to `auto_batching_timeout` after it opened. It closes at the first of:
- it holds `batch_size` images ("full"), or the next queued request would not fit ("next does not fit"),
  or the next queued request is in the other input form ("next is another form": uint8 pixels from images,
  float32 tensors from the Open Inference Protocol's FP32 input; see `pipeline.pixels`);
- `auto_batching_timeout` has passed since it opened ("timeout"); with auto_batching_timeout <= 0 or
  batch_size 1 it never waits ("no wait": it takes what is already queued; Paddle Serving would block
  until the batch is full);
- with `wait_for_arrivals` (the server's pipeline): no other request is on its way, i.e. being decoded
  and preprocessed, as the pipeline reports with `announce`/`withdraw` ("nothing arriving"). Waiting
  then could only add latency (at concurrency 1, all of it), so a lone request never waits out the
  timeout.

A request's images are never split across batches (a request larger than batch_size runs alone), and
each request gets back exactly its own rows of the batch output. Each batch is logged at DEBUG with its
size, its requests, why it closed and how long it waited.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from resnest_serving.pipeline.engines.base import Engine, infer_batch

log = logging.getLogger(__name__)


@dataclass
class _Item:
    images: np.ndarray
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def count(self) -> int:
        return self.images.shape[0]


class BatchObserver:
    """Hooks for metrics; the default does nothing."""

    def batch_done(self, images: int, requests: int, queue_wait_s: float, infer_s: float) -> None: ...

    def queue_depth(self, images: int) -> None: ...


class QueueFull(Exception):
    """The queue already holds max_queue_images images."""


class DynamicBatcher:
    """Feeds engine instances from one queue; `submit` returns the request's own output rows."""

    def __init__(self, engines: list[Engine], batch_size: int, timeout_ms: float, max_queue_images: int,
                 observer: BatchObserver | None = None, wait_for_arrivals: bool = False):
        self.engines = engines
        self.batch_size = max(1, batch_size)
        self.timeout_s = timeout_ms / 1000.0 if timeout_ms > 0 and batch_size > 1 else 0.0
        self.max_queue_images = max_queue_images
        self.observer = observer or BatchObserver()
        self._queue: collections.deque[_Item] = collections.deque()
        self._queued_images = 0
        self._wakeup: asyncio.Event | None = None
        self._workers: list[asyncio.Task] = []
        self._arriving = 0  # requests announced (in preprocessing) but not yet submitted
        self._submitted = 0  # requests submitted and not yet answered (queued, in an open batch or an engine)
        self.wait_for_arrivals = wait_for_arrivals

    async def start(self) -> None:
        """Start feeding the engines (already started: loaded and warmed up)."""
        self._wakeup = asyncio.Event()
        self._workers = [asyncio.create_task(self._worker(engine), name=f"batcher-{i}")
                         for i, engine in enumerate(self.engines)]

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(asyncio.CancelledError("pipeline stopped"))
        self._queue.clear()
        await asyncio.gather(*(engine.close() for engine in self.engines), return_exceptions=True)

    def announce(self) -> None:
        """A request will be submitted soon (it is being preprocessed): open batches may wait for it."""
        self._arriving += 1

    def withdraw(self) -> None:
        """An announced request was submitted or failed: stop waiting for it."""
        self._arriving -= 1
        if self._wakeup is not None:
            self._wakeup.set()

    @property
    def idle(self) -> bool:
        """No request is on its way (announced, being preprocessed), queued, in an open batch or in an engine."""
        return self._arriving == 0 and self._submitted == 0

    async def submit(self, images: np.ndarray) -> np.ndarray:
        """Queue a request's images (uint8 pixels [n, H, W, 3] or float32 tensors [n, 3, H, W]); wait for and
        return its output rows [n, classes]."""
        if self._queued_images + images.shape[0] > self.max_queue_images:
            raise QueueFull(f"{self._queued_images} images already queued (max_queue_images "
                            f"{self.max_queue_images})")
        item = _Item(images, asyncio.get_running_loop().create_future())
        self._queue.append(item)
        self._queued_images += item.count
        self.observer.queue_depth(self._queued_images)
        self._wakeup.set()
        self._submitted += 1
        try:
            return await item.future
        finally:
            self._submitted -= 1

    def _take(self) -> _Item:
        item = self._queue.popleft()
        self._queued_images -= item.count
        return item

    async def _next_batch(self) -> tuple[list[_Item], str, float]:
        """The next batch, why it closed (see the module's docstring) and how long it stayed open (s)."""
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        loop = asyncio.get_running_loop()
        batch = [self._take()]
        images = batch[0].count
        opened = loop.time()
        deadline = opened + self.timeout_s
        reason = "full"
        while images < self.batch_size:
            if self._queue:
                if images + self._queue[0].count > self.batch_size:
                    reason = "next does not fit"
                    break
                if self._queue[0].images.dtype != batch[0].images.dtype:
                    reason = "next is another form"
                    break
                batch.append(self._take())
                images += batch[-1].count
                continue
            remaining = deadline - loop.time()
            if self.timeout_s <= 0:
                reason = "no wait"
                break
            if remaining <= 0:
                reason = "timeout"
                break
            if self.wait_for_arrivals and self._arriving == 0:
                reason = "nothing arriving"
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                reason = "timeout"
                break
        self.observer.queue_depth(self._queued_images)
        if self._queue:
            self._wakeup.set()  # let another idle instance start on what is left
        return batch, reason, loop.time() - opened

    async def _worker(self, engine: Engine) -> None:
        while True:
            batch, reason, open_s = await self._next_batch()
            log.debug("batch of %d image(s) from %d request(s) closed (%s) after %.1f ms (batch_size %d, "
                      "auto_batching_timeout %g ms)", sum(item.count for item in batch), len(batch), reason,
                      open_s * 1000, self.batch_size, self.timeout_s * 1000)
            batch = [item for item in batch if not item.future.done()]  # caller gave up (timeout)
            if not batch:
                continue
            started = time.perf_counter()
            images = sum(item.count for item in batch)
            try:
                outputs = await infer_batch(engine, [item.images for item in batch])
            except Exception as exc:  # engine failure: every request of this batch gets it
                log.error("engine failed on a batch of %d images: %s: %s", images, type(exc).__name__,
                          exc, exc_info=log.isEnabledFor(logging.DEBUG))
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            infer_s = time.perf_counter() - started
            self.observer.batch_done(images, len(batch), started - batch[0].enqueued, infer_s)
            offset = 0
            for item in batch:
                if not item.future.done():
                    item.future.set_result(outputs[offset:offset + item.count])
                offset += item.count
