"""Load-test statistics and the per-request answer checks (no server)."""

from __future__ import annotations

import asyncio
import math
import random

import pytest

from resnest_serving.client.base import AsyncClassifier
from resnest_serving.client.bench import AnswerChecker, BenchConfig, BenchReport, Sample, _Load
from resnest_serving.client.codec import Classification
from resnest_serving.client.errors import TransportError
from resnest_serving.client.stats import find_knee, histogram_totals, latency_summary, stage_means
from resnest_serving.protocol.pipeline_service_pb2 import Response


def test_latency_summary_is_ordered_and_in_ms():
    rng = random.Random(2)
    summary = latency_summary(rng.expovariate(20) for _ in range(500))
    keys = ["min", "p50", "p90", "p95", "p99", "max"]
    assert [summary[k] for k in keys] == sorted(summary[k] for k in keys)
    assert summary["count"] == 500
    assert latency_summary([0.001, 0.003]) == {"count": 2, "mean": 2.0, "min": 1.0, "p50": 2.0,
                                                     "p90": pytest.approx(2.8), "p95": pytest.approx(2.9),
                                                     "p99": pytest.approx(2.98), "max": 3.0}
    empty = latency_summary([])
    assert empty["count"] == 0 and math.isnan(empty["p99"])


def test_knee():
    levels = [(1, 10.0), (2, 18.0), (4, 24.0), (8, 25.0), (16, 24.5)]
    assert find_knee(levels) == 4  # 24 >= 0.95 * 25
    assert find_knee(levels, 0.99) == 8
    assert find_knee(levels, 0.5) == 2
    assert find_knee([(4, 5.0), (1, 5.0)]) == 1  # order of the levels does not matter
    assert find_knee([(1, 0.0), (2, 0.0)]) is None
    assert find_knee([]) is None
    with pytest.raises(ValueError):
        find_knee(levels, 0)


METRICS_BEFORE = """# HELP resnest_stage_seconds Latency per pipeline stage
# TYPE resnest_stage_seconds histogram
resnest_stage_seconds_bucket{stage="preprocess",le="0.01"} 1.0
resnest_stage_seconds_bucket{stage="preprocess",le="+Inf"} 2.0
resnest_stage_seconds_count{stage="preprocess"} 2.0
resnest_stage_seconds_sum{stage="preprocess"} 0.5
resnest_stage_seconds_count{stage="engine"} 1.0
resnest_stage_seconds_sum{stage="engine"} 1.0
# TYPE resnest_requests counter
resnest_requests_total{err_no="0",protocol="grpc"} 3.0
"""
METRICS_AFTER = METRICS_BEFORE.replace('count{stage="preprocess"} 2.0', 'count{stage="preprocess"} 6.0').replace(
    'sum{stage="preprocess"} 0.5', 'sum{stage="preprocess"} 0.9') + """resnest_stage_seconds_count{stage="total"} 4.0
resnest_stage_seconds_sum{stage="total"} 0.2
"""


def test_stage_means_from_two_scrapes():
    before = histogram_totals(METRICS_BEFORE, "resnest_stage_seconds", "stage")
    after = histogram_totals(METRICS_AFTER, "resnest_stage_seconds", "stage")
    assert before == {"preprocess": (0.5, 2.0), "engine": (1.0, 1.0)}
    means = stage_means(before, after)
    assert set(means) == {"preprocess", "total"}  # engine saw nothing new in between
    assert means["preprocess"]["count"] == 4 and means["preprocess"]["mean"] == pytest.approx(0.1)
    assert means["total"]["mean"] == pytest.approx(0.05)
    assert histogram_totals("", "resnest_stage_seconds", "stage") == {}


def test_answer_checker():
    checker = AnswerChecker()
    a, b = Classification("a", 0.9, ("a",), (0.9,)), Classification("b", 0.8, ("b",), (0.8,))
    assert checker.check([0, 1], [a, b]) is None
    assert checker.check([1, 0, 1], [b, a, b]) is None
    assert "image #0" in checker.check([0], [b])


def test_report_counts_and_json_shape():
    samples = [Sample(0.0, 0.010, 2), Sample(0.1, 0.020, 2), Sample(0.2, 0.5, 2, "timeout")]
    report = BenchReport({"rate": None}, 0.0, 1.0, samples)
    s = report.summary()
    assert (s["requests"], s["successes"], s["errors"]) == (3, 2, 1)
    assert s["errors_by_kind"] == {"timeout": 1} and s["qps"] == 2.0 and s["images_per_s"] == 4.0
    assert s["latency_ms"]["max"] == pytest.approx(20.0)  # failed requests are not in the latency figures
    raw = report.to_dict()["samples"]
    assert raw[2] == {"t_s": 0.2, "latency_ms": 500.0, "images": 2, "error": "timeout", "image_ids": []}


class FakeClient(AsyncClassifier):
    """Answers from a script: a Response, or an exception to raise."""

    protocol = "fake"

    def __init__(self, answers):
        super().__init__("127.0.0.1:1")
        self.answers = list(answers)

    async def infer(self, request, *, timeout=None):
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer(len(request.key)) if callable(answer) else answer


def ok(label="a"):
    return lambda n: Response(key=["label", "prob"], value=[str([label] * n), str([0.5] * n)])


def test_every_answer_is_checked(tmp_path):
    image = tmp_path / "x.png"
    image.write_bytes(b"png")
    answers = [
        ok("a"),
        Response(err_no=5000, err_msg="bad image"),
        Response(),  # empty answer
        lambda n: Response(key=["label", "prob"], value=["['a']", "[0.5]"]),  # 1 result for 2 images
        lambda n: Response(key=["label", "prob"], value=[str(["a"] * n), "__import__('os')"]),
        ok("b"),  # the same image answered differently
        TransportError("down", protocol="grpc", code="UNAVAILABLE"),
        ValueError("client bug"),
        ok("a"),
    ]
    config = BenchConfig("grpc", "127.0.0.1:1", [image], images_per_request=2)
    load = _Load(config, FakeClient(answers), AnswerChecker())

    async def run_all():
        return [(await load.one())[0] for _ in answers]

    kinds = asyncio.run(run_all())
    assert kinds == [None, "err_no 5000", "bad_response", "bad_response", "bad_response", "wrong_answer",
                     "grpc UNAVAILABLE", "exception ValueError", None]
    assert "top-1" in load.error_examples["wrong_answer"]


@pytest.mark.parametrize(("changes", "match"), [
    ({"duration": 0}, "always bounded"),
    ({"duration": float("inf")}, "always bounded"),
    ({"requests": 0}, "always bounded"),
    ({"concurrency": 0}, "concurrency"),
    ({"rate": -1.0}, "rate"),
    ({"images_per_request": 0}, "images-per-request"),
    ({"images": []}, "no images"),
    ({"protocol": "ftp"}, "unknown protocol"),
    ({"endpoint": "10.1.2.3:9993"}, "non-loopback"),
    ({"metrics_url": "http://10.1.2.3:18080/metrics"}, "non-loopback"),
])
def test_config_refusals(tmp_path, changes, match):
    config = BenchConfig(**{"protocol": "grpc", "endpoint": "127.0.0.1:9993", "images": [tmp_path / "x.jpg"],
                            **changes})
    with pytest.raises(ValueError, match=match):
        config.validate()


def test_config_defaults_to_a_bounded_run(tmp_path):
    config = BenchConfig("http", "localhost:18080", [tmp_path / "x.jpg"])
    config.validate()
    assert config.duration == 10.0
    BenchConfig("grpc", "10.1.2.3:9993", [tmp_path / "x.jpg"], allow_remote=True).validate()
