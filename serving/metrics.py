"""Prometheus metrics for one server process: requests by protocol and err_no, latency per stage,
batch sizes and queue depth. Exposed at GET /metrics on the HTTP port."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from pipeline.pipeline import StageObserver

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                   10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics(StageObserver):
    """The pipeline's observer plus per-protocol request accounting."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("resnest_requests", "Requests answered, by protocol and Paddle Serving err_no",
                                ["protocol", "err_no"], registry=self.registry)
        self.request_seconds = Histogram("resnest_request_seconds", "Request latency inside the server, by "
                                         "protocol", ["protocol"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.stage_seconds = Histogram("resnest_stage_seconds", "Latency per pipeline stage (preprocess, "
                                       "queue_wait, engine, inference, postprocess, total)", ["stage"],
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_images = Histogram("resnest_batch_images", "Images per engine batch", buckets=BATCH_BUCKETS,
                                      registry=self.registry)
        self.batch_requests = Histogram("resnest_batch_requests", "Requests per engine batch",
                                        buckets=BATCH_BUCKETS, registry=self.registry)
        self.queue_images = Gauge("resnest_queue_images", "Images waiting for an engine instance",
                                  registry=self.registry)

    def stage(self, name: str, seconds: float) -> None:
        self.stage_seconds.labels(name).observe(seconds)

    def batch_done(self, images: int, requests: int, queue_wait_s: float, infer_s: float) -> None:
        self.batch_images.observe(images)
        self.batch_requests.observe(requests)
        self.stage_seconds.labels("queue_wait").observe(queue_wait_s)
        self.stage_seconds.labels("engine").observe(infer_s)

    def queue_depth(self, images: int) -> None:
        self.queue_images.set(images)

    def request_done(self, protocol: str, err_no: int, seconds: float) -> None:
        self.requests.labels(protocol, str(err_no)).inc()
        self.request_seconds.labels(protocol).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
