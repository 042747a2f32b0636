"""Prometheus metrics for one server process: requests by protocol and err_no, latency per stage,
batch sizes and queue depth. Exposed at GET /metrics on the HTTP port. With `dag.tracer.interval_s`, a
`Tracer` also logs throughput and latency every interval (Paddle Serving's PerformanceTracer)."""

from __future__ import annotations

import asyncio
import collections
import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from resnest_serving.pipeline.pipeline import StageObserver

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                   10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Window:
    """Requests since the tracer's last line, as counters (bounded memory): count, err_no counts (a handful
    of codes), total and max latency."""

    __slots__ = ("count", "codes", "total_s", "max_s")

    def __init__(self) -> None:
        self.count = 0
        self.codes: collections.Counter[int] = collections.Counter()
        self.total_s = 0.0
        self.max_s = 0.0

    def add(self, err_no: int, seconds: float) -> None:
        self.count += 1
        self.codes[err_no] += 1
        self.total_s += seconds
        self.max_s = max(self.max_s, seconds)


class Metrics:
    """The server's Prometheus registry: per-protocol, per-model request accounting; `for_model` gives each
    model's pipeline observer."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("resnest_requests", "Requests answered, by protocol, Paddle Serving err_no and "
                                "model (\"\" when refused before a model was named)",
                                ["protocol", "err_no", "model"], registry=self.registry)
        self.request_seconds = Histogram("resnest_request_seconds", "Request latency inside the server, by "
                                         "protocol and model", ["protocol", "model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.stage_seconds = Histogram("resnest_stage_seconds", "Latency per pipeline stage (preprocess, "
                                       "queue_wait, engine, inference, postprocess, total), by model", ["stage", "model"],
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_images = Histogram("resnest_batch_images", "Images per engine batch, by model", ["model"],
                                      buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_requests = Histogram("resnest_batch_requests", "Requests per engine batch, by model", ["model"],
                                        buckets=BATCH_BUCKETS, registry=self.registry)
        self.queue_images = Gauge("resnest_queue_images", "Images waiting for an engine instance, by model",
                                  ["model"], registry=self.registry)
        self.refused_requests = Counter("resnest_refused_requests", "HTTP requests refused before "
                                        "authentication (401, and 405/413 on the open health paths), by "
                                        "protocol and HTTP status; not counted in resnest_requests",
                                        ["protocol", "status"], registry=self.registry)
        self.cache_hits = Counter("resnest_response_cache_hits", "Images answered from the response cache, by "
                                  "model", ["model"], registry=self.registry)
        self.cache_misses = Counter("resnest_response_cache_misses", "Images looked up in the response cache and "
                                    "not found, by model", ["model"], registry=self.registry)
        self.cache_bytes = Gauge("resnest_response_cache_bytes", "Bytes held by the response cache, by model",
                                 ["model"], registry=self.registry)
        self.window = Window()  # since the tracer's last line: fixed size, whatever the traffic

    def for_model(self, model: str) -> ModelMetrics:
        """The pipeline observer of one model (its stage, batch and queue series carry `model`)."""
        return ModelMetrics(self, model)

    def request_done(self, protocol: str, err_no: int, seconds: float, model: str = "") -> None:
        self.requests.labels(protocol, str(err_no), model).inc()
        self.request_seconds.labels(protocol, model).observe(seconds)
        self.window.add(err_no, seconds)

    def refused(self, protocol: str, status: int) -> None:
        """Count a request refused before authentication (never as an err_no: no caller was identified)."""
        self.refused_requests.labels(protocol, str(status)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class ModelMetrics(StageObserver):
    """One model's pipeline observer: writes into the server's Metrics with its `model` label."""

    def __init__(self, metrics: Metrics, model: str):
        self.metrics = metrics
        self.model = model

    def stage(self, name: str, seconds: float) -> None:
        self.metrics.stage_seconds.labels(name, self.model).observe(seconds)

    def batch_done(self, images: int, requests: int, queue_wait_s: float, infer_s: float) -> None:
        m = self.metrics
        m.batch_images.labels(self.model).observe(images)
        m.batch_requests.labels(self.model).observe(requests)
        m.stage_seconds.labels("queue_wait", self.model).observe(queue_wait_s)
        m.stage_seconds.labels("engine", self.model).observe(infer_s)

    def queue_depth(self, images: int) -> None:
        self.metrics.queue_images.labels(self.model).set(images)

    def response_cache(self, model: str, hits: int, misses: int, used_bytes: int) -> None:
        m = self.metrics
        m.cache_hits.labels(model).inc(hits)
        m.cache_misses.labels(model).inc(misses)
        m.cache_bytes.labels(model).set(used_bytes)


class Tracer:
    """Every `interval_s` seconds, one line on the `pipeline.tracer` logger: requests, QPS, err_no counts and
    latency (mean, max) over the interval; `await stop()` ends it."""

    def __init__(self, metrics: Metrics, interval_s: float):
        self.metrics = metrics
        self.interval_s = interval_s
        self.log = logging.getLogger("pipeline.tracer")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tracer")

    async def _run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.interval_s)
            now = time.monotonic()
            window, self.metrics.window = self.metrics.window, Window()
            self.log.info("%s", describe_window(window, now - last))
            last = now

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def describe_window(window: Window, seconds: float) -> str:
    """'tracer: N requests in S s (Q qps), err_no {0: n, ...}, latency mean M ms, max X ms'."""
    if not window.count:
        return f"tracer: 0 requests in {seconds:.1f} s"
    codes = dict(sorted(window.codes.items()))
    return (f"tracer: {window.count} requests in {seconds:.1f} s ({window.count / seconds:.2f} qps), err_no "
            f"{codes}, latency mean {1000 * window.total_s / window.count:.1f} ms, max {1000 * window.max_s:.1f} ms")
