"""The transport-agnostic pipeline: Request → decode + preprocess → dynamic batcher → engine → top-k →
Response. Every protocol adapter calls `Pipeline.infer`; one Pipeline object serves them all.

What reaches the engine (`pipeline.pixels`): images as their cropped uint8 pixels when the engines take them
(local engines, which normalize inside their graph), otherwise as float32 tensors normalized here in the
preprocessing threads (the remote engine, whose wire carries FP32: this is the one place that converts for
it); a preprocessed FP32 tensor request (Open Inference Protocol) goes through as float32 tensors.

With `response_cache_mb` > 0, every image is first looked up in the response cache (pipeline.response_cache):
cached images skip decoding and the engine, only the others are preprocessed and batched, and their rows are
stored once the engine has answered. Tensor requests bypass it."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from resnest_serving.pipeline.batcher import BatchObserver, DynamicBatcher, QueueFull
from resnest_serving.pipeline.engines.base import Engine, EngineError, takes_pixels
from resnest_serving.pipeline.errors import ErrorCode, PipelineError
from resnest_serving.pipeline.postprocess import Postprocessor
from resnest_serving.pipeline.preprocess import Preprocessor, PreprocessSpec, b64decode_image
from resnest_serving.pipeline.response_cache import ResponseCache
from resnest_serving.pipeline.types import Request, Response
from resnest_serving.protocol.bundle import ModelBundle
from resnest_serving.protocol.wire import PROFILE_KEY

log = logging.getLogger(__name__)

MIB = 1 << 20


@dataclass(frozen=True)
class PipelineSettings:
    """Op-level behaviour, in Paddle Serving's vocabulary where it has one. No defaults here: they are the
    config schema's (serving/config/schema.py), the one place each is declared and documented."""

    service_name: str
    topk: int
    batch_size: int
    auto_batching_timeout_ms: float
    timeout_ms: float  # > 0: a request taking longer gets err_no 6000
    max_images_per_request: int
    max_image_pixels: int
    max_aspect_ratio: float
    jpeg_dct_scaling: bool
    max_queue_images: int
    preprocess_threads: int
    retry: int  # attempts for a request that timed out (err_no 6000), as Paddle Serving's dag.retry
    log_profile: bool  # one log line per request with its stage timings (dag.use_profile)
    response_cache_mb: float  # > 0: the response cache's size limit in MiB; 0: no cache


class StageObserver(BatchObserver):
    """Metrics hooks: per-stage latency and request outcomes, plus the batcher's hooks."""

    def stage(self, name: str, seconds: float) -> None: ...

    def response_cache(self, model: str, hits: int, misses: int, used_bytes: int) -> None:
        """One request's cache lookups (hits, misses) and the cache's bytes in use after it."""


INLINE_MAX_BYTES = 300_000
"""A request's lone image of at most this many bytes (base64 text or file), when the server is otherwise idle
(no request in preprocessing, none queued or in an engine), is decoded on the event loop itself: an
ImageNet-size JPEG takes 1-3 ms, and handing it to a pool thread and waking the loop again costs about
1 CPU-ms per request on 2 cores (bench.served --stages). More images, bigger ones, or a busy server: the
thread pool, so the loop never decodes a big photo; a request decoded while others are under way is
announced to the batcher over an await (an inline decode has none), so open batches wait for it, and it
decodes on the other core while the loop serves the protocols (README: inlining under load was slower at c4
even where batches never wait)."""


class Pipeline:
    """Serves one model. Create, `await start()`, call `infer` from any protocol, `await stop()`."""

    def __init__(self, bundle: ModelBundle, engines: list[Engine], settings: PipelineSettings,
                 observer: StageObserver | None = None, version: str = "1"):
        self.bundle = bundle
        self.settings = settings
        self.version = version  # part of every cache key; a new version gets a new Pipeline, so a new cache
        self.cache = (ResponseCache(int(settings.response_cache_mb * MIB)) if settings.response_cache_mb > 0
                      else None)
        self.observer = observer or StageObserver()
        meta = bundle.meta
        self.preprocess = Preprocessor(PreprocessSpec(meta.resize_short, meta.crop_size, meta.mean, meta.std,
                                                      settings.max_image_pixels, settings.max_aspect_ratio,
                                                      settings.jpeg_dct_scaling))
        self.engines_take_pixels = all(takes_pixels(engine) for engine in engines)  # else normalized here
        self.postprocess = Postprocessor(bundle.labels, settings.topk)
        self.batcher = DynamicBatcher(engines, settings.batch_size, settings.auto_batching_timeout_ms,
                                      settings.max_queue_images, self.observer, wait_for_arrivals=True)
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight: set[asyncio.Future] = set()
        self._abort_reason = ""
        self.ready = False

    async def start(self) -> None:
        self._pool = ThreadPoolExecutor(self.settings.preprocess_threads, thread_name_prefix="preprocess")
        await self.batcher.start()
        self.ready = True

    def abort(self, reason: str) -> int:
        """Answer every request still in flight now, with err_no 3001 and `reason`, and refuse new ones
        (shutdown after its grace period); returns how many were in flight."""
        self.ready = False
        self._abort_reason = reason
        for work in self._in_flight:
            work.cancel()
        return len(self._in_flight)

    async def stop(self) -> None:
        self.ready = False
        await self.batcher.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    async def infer(self, request: Request) -> Response:
        """Classify every image of the request; errors become a Response with a Paddle Serving err_no."""
        started = time.perf_counter()
        work = asyncio.ensure_future(self._attempts(request))
        self._in_flight.add(work)
        try:
            response = await work
        except asyncio.CancelledError:
            if not work.cancelled() or not self._abort_reason or asyncio.current_task().cancelling():
                raise  # the caller was cancelled (its client went away), not this request
            log.info("logid=%d protocol=%s err_no=%d %s", request.logid, request.protocol, ErrorCode.CLOSED_ERROR,
                     self._abort_reason)
            response = Response(err_no=int(ErrorCode.CLOSED_ERROR), err_msg=self._abort_reason)
        except PipelineError as exc:
            log.info("logid=%d protocol=%s err_no=%d %s", request.logid, request.protocol, exc.code, exc.message)
            response = Response.from_error(exc)
        except EngineError as exc:  # the engine failed on this batch (its worker logged it); keep serving
            log.info("logid=%d protocol=%s err_no=%d engine error: %s", request.logid, request.protocol,
                     ErrorCode.UNKNOW, exc)
            response = Response(err_no=int(ErrorCode.UNKNOW), err_msg=f"Log_id: {request.logid} engine error: {exc}")
        except Exception as exc:  # a bug or an engine failure: report it, keep serving
            log.exception("logid=%d protocol=%s unexpected error", request.logid, request.protocol)
            response = Response(err_no=int(ErrorCode.UNKNOW), err_msg=f"Log_id: {request.logid} unexpected "
                                f"error: {type(exc).__name__}: {exc}")
        finally:
            self._in_flight.discard(work)
        seconds = time.perf_counter() - started
        self.observer.stage("total", seconds)
        if response.err_no == 0 and log.isEnabledFor(logging.DEBUG):
            log.debug("logid=%d protocol=%s ok images=%d %.1f ms", request.logid, request.protocol,
                      len(request.keys), seconds * 1000)
        return response

    async def _attempts(self, request: Request) -> Response:
        """Up to `retry` attempts while the request times out (err_no 6000), as Paddle Serving's DAG does."""
        for attempt in range(1, self.settings.retry + 1):
            try:
                return await self._attempt(request)
            except PipelineError as exc:
                if exc.code != ErrorCode.TIMEOUT or attempt == self.settings.retry:
                    if exc.code == ErrorCode.TIMEOUT and self.settings.retry > 1:
                        raise PipelineError(exc.code, f"{exc.message}; exceeded retry count "
                                            f"({self.settings.retry} attempts)") from None
                    raise
                log.info("logid=%d protocol=%s attempt %d/%d timed out: %s; retrying", request.logid,
                         request.protocol, attempt, self.settings.retry, exc.message)
        raise AssertionError("unreachable")

    async def _attempt(self, request: Request) -> Response:
        if self.settings.timeout_ms <= 0:
            return await self._infer(request)
        try:
            return await asyncio.wait_for(self._infer(request), self.settings.timeout_ms / 1000)
        except TimeoutError:
            raise PipelineError(ErrorCode.TIMEOUT, f"request took longer than the op timeout of "
                                f"{self.settings.timeout_ms:g} ms") from None

    async def _infer(self, request: Request) -> Response:
        if request.name and request.name != self.settings.service_name:
            raise PipelineError(ErrorCode.NO_SERVICE, f"Failed to inference: Service name error. (got "
                                f"{request.name!r}; this server serves {self.settings.service_name!r})")
        if not self.ready:
            raise PipelineError(ErrorCode.CLOSED_ERROR, "dag closed.")
        images = self._images(request)
        profile = {}

        t0 = time.perf_counter()
        cached: list[np.ndarray | None] = [None] * len(images)
        keys: list[bytes | None] = [None] * len(images)
        caching = self.cache is not None and request.tensor is None
        if caching:
            images, keys, cached = self._look_up(images)
        misses = [i for i, row in enumerate(cached) if row is None]
        if caching:
            self.observer.response_cache(self.settings.service_name, len(images) - len(misses), len(misses),
                                         self.cache.used_bytes)
        fresh = None
        if misses:
            fresh = await self._run_engine([images[i] for i in misses], request.tensor, profile, t0)
        else:
            profile["preprocess"] = profile["inference"] = 0.0  # every image from the cache
        if caching:
            for j, i in enumerate(misses):
                if keys[i] is not None:
                    self.cache.put(keys[i], fresh[j])
            self.observer.response_cache(self.settings.service_name, 0, 0, self.cache.used_bytes)
            profile_marker = f"cache:{len(images) - len(misses)}/{len(images)} "
        else:
            profile_marker = ""
        probs = fresh if len(misses) == len(images) else self._merge(cached, misses, fresh)

        t2 = time.perf_counter()
        values = self.postprocess(probs)
        profile["postprocess"] = time.perf_counter() - t2
        self.observer.stage("postprocess", profile["postprocess"])
        timings = profile_marker + " ".join(f"{k}:{v * 1000:.3f}ms" for k, v in profile.items())
        if PROFILE_KEY in request.keys:
            values[PROFILE_KEY] = timings
        if self.settings.log_profile:
            log.info("logid=%d protocol=%s profile images:%d %s", request.logid, request.protocol,
                     len(images), timings)
        return Response(keys=list(values), values=list(values.values()), probs=probs)

    async def _run_engine(self, images: list[tuple[str, str | bytes]], tensor: np.ndarray | None,
                          profile: dict[str, float], t0: float) -> np.ndarray:
        """Preprocess `images` (or check `tensor`), run them through the batcher; the rows, in order."""
        idle = self.batcher.idle  # asked before this request is announced (see INLINE_MAX_BYTES)
        self.batcher.announce()
        try:
            batch = self._check_tensor(tensor) if tensor is not None else await self._preprocess_all(images, idle)
        finally:
            self.batcher.withdraw()
        profile["preprocess"] = time.perf_counter() - t0
        self.observer.stage("preprocess", profile["preprocess"])

        t1 = time.perf_counter()
        try:
            probs = await self.batcher.submit(batch)
        except QueueFull as exc:
            raise PipelineError(ErrorCode.TIMEOUT, f"server overloaded: {exc}; retry later") from None
        profile["inference"] = time.perf_counter() - t1
        self.observer.stage("inference", profile["inference"])
        return probs

    def _look_up(self, images: list[tuple[str, str | bytes]]
                 ) -> tuple[list[tuple[str, str | bytes]], list[bytes | None], list[np.ndarray | None]]:
        """Each image's cache key and cached row (None: a miss). Base64 text is decoded first (the key is the
        file's bytes, shared with raw-bytes requests) and handed on decoded; a value that is not valid base64
        keeps its text and no key, so preprocessing reports it as it always does."""
        decoded, keys, rows = [], [], []
        for key, value in images:
            if isinstance(value, str):
                try:
                    value = b64decode_image(key, value)
                except PipelineError:
                    decoded.append((key, value))
                    keys.append(None)
                    rows.append(None)
                    continue
            cache_key = ResponseCache.key(self.version, value)
            decoded.append((key, value))
            keys.append(cache_key)
            rows.append(self.cache.get(cache_key))
        return decoded, keys, rows

    @staticmethod
    def _merge(cached: list[np.ndarray | None], misses: list[int], fresh: np.ndarray | None) -> np.ndarray:
        """The output rows in request order: cached rows where they were found, the engine's for the misses."""
        rows = list(cached)
        for j, i in enumerate(misses):
            rows[i] = fresh[j]
        return np.stack(rows)

    def _images(self, request: Request) -> list[tuple[str, str | bytes | np.ndarray]]:
        """(key, value) pairs that are images: every key except Paddle Serving's profile key. A value is
        base64 text, or encoded bytes (`request.images`), or a preprocessed row (`request.tensor`)."""
        values: list = request.values
        if request.images is not None:
            values = request.images
        elif request.tensor is not None:
            values = list(request.tensor)
        if len(request.keys) != len(values):
            raise PipelineError(ErrorCode.INPUT_PARAMS_ERROR, f"request has {len(request.keys)} keys but "
                                f"{len(values)} values; they must pair up")
        images = [(k, v) for k, v in zip(request.keys, values, strict=True) if k != PROFILE_KEY]
        if not images:
            raise PipelineError(ErrorCode.INPUT_PARAMS_ERROR, "request has no images: send each image as a "
                                "key with a base64 value, e.g. {\"key\": [\"image\"], \"value\": [\"<b64>\"]}")
        if len(images) > self.settings.max_images_per_request:
            raise PipelineError(ErrorCode.INPUT_PARAMS_ERROR, f"request has {len(images)} images; this server "
                                f"takes at most {self.settings.max_images_per_request} per request")
        return images

    def _prepare(self, key: str, value: str | bytes) -> np.ndarray:
        """One image → what the engines take (module docstring): base64 text (Paddle Serving) or encoded bytes
        (Open Inference Protocol, no base64 round trip)."""
        if isinstance(value, bytes):
            pixels = self.preprocess.pixels_from_bytes(key, value)
        else:
            pixels = self.preprocess.pixels(key, value)
        return pixels if self.engines_take_pixels else self.preprocess.normalize(pixels)

    def _check_tensor(self, tensor: np.ndarray) -> np.ndarray:
        """A preprocessed batch exactly as the engines take it: finite float32 [N, 3, crop, crop]."""
        crop = self.preprocess.spec.crop_size
        if tensor.dtype != np.float32 or tensor.ndim != 4 or tensor.shape[1:] != (3, crop, crop):
            raise PipelineError(ErrorCode.INPUT_PARAMS_ERROR, f"tensor is {tensor.dtype} {list(tensor.shape)}; "
                                f"this model takes float32 [N, 3, {crop}, {crop}] (RGB, /255, mean/std "
                                "normalized, CHW)")
        if not np.isfinite(tensor).all():
            raise PipelineError(ErrorCode.INPUT_PARAMS_ERROR, "tensor has NaN or infinite values")
        return np.ascontiguousarray(tensor)

    async def _preprocess_all(self, images: list[tuple[str, str | bytes]], idle: bool) -> np.ndarray:
        """Preprocess every image in the thread pool, or a lone small image at once on the event loop when the
        server is otherwise `idle` (see INLINE_MAX_BYTES). At the first bad image the ones not yet
        started are cancelled, the ones already decoding are awaited (so their memory is back when we answer),
        and the error is raised without its traceback, so no decoded pixels outlive it."""
        if idle and len(images) == 1 and len(images[0][1]) <= INLINE_MAX_BYTES:
            try:
                return self._prepare(*images[0])[None]
            except PipelineError as exc:
                raise PipelineError(exc.code, exc.message) from None
        return await self._preprocess_in_pool(images)

    async def _preprocess_in_pool(self, images: list[tuple[str, str | bytes]]) -> np.ndarray:
        jobs = [self._pool.submit(self._prepare, k, v) for k, v in images]
        waiting = [asyncio.wrap_future(job) for job in jobs]
        for future in waiting:  # an image failing after the answer is decided must not log "never retrieved"
            future.add_done_callback(_retrieve_exception)
        try:
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_EXCEPTION)
        except asyncio.CancelledError:
            for job in jobs:
                job.cancel()
            raise
        errors = [f.exception() for f in done if f.exception() is not None]
        if not errors:
            return np.stack([job.result() for job in jobs])
        running = [w for job, w in zip(jobs, waiting, strict=True) if not job.cancel() and not job.done()]
        if running:
            await asyncio.wait(running)
        first = errors[0]
        if not isinstance(first, PipelineError):
            raise first
        failed = sum(1 for job in jobs if job.done() and not job.cancelled() and job.exception() is not None)
        more = f" (and {failed - 1} more bad images)" if failed > 1 else ""
        raise PipelineError(first.code, first.message + more) from None


def _retrieve_exception(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()
