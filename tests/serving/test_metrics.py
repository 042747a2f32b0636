"""Metrics hold fixed-size state whatever the traffic (issue #24: `Metrics.window` grew by ~89 bytes per
request with the tracer off), and refusals before authentication stay out of err_no."""

from __future__ import annotations

import tracemalloc

from resnest_serving.serving.metrics import Metrics, Window, describe_window


def test_window_is_fixed_size_with_the_tracer_off():
    metrics = Metrics()
    for i in range(1000):  # warm up label children and the err_no counter
        metrics.request_done("http", 5000 if i % 2 else 0, 0.001)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(50_000):
            metrics.request_done("http", 5000 if i % 2 else 0, 0.001 * (i % 7))
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 1_000_000, grown  # a list of (err_no, seconds) tuples: ~4.5 MB
    window = metrics.window
    assert window.count == 51_000 and dict(window.codes) == {0: 25_500, 5000: 25_500}
    assert abs(window.max_s - 0.006) < 1e-9


def test_describe_window():
    window = Window()
    assert describe_window(window, 2.0) == "tracer: 0 requests in 2.0 s"
    for err_no, seconds in ((0, 0.010), (0, 0.030), (6000, 0.020)):
        window.add(err_no, seconds)
    assert describe_window(window, 2.0) == ("tracer: 3 requests in 2.0 s (1.50 qps), err_no {0: 2, 6000: 1}, "
                                            "latency mean 20.0 ms, max 30.0 ms")


def test_refusals_before_auth_are_not_err_no():
    metrics = Metrics()
    metrics.refused("http", 401)
    metrics.refused("http", 401)
    metrics.refused("v2-http", 405)
    text = metrics.exposition().decode()
    assert 'resnest_refused_requests_total{protocol="http",status="401"} 2.0' in text
    assert 'resnest_refused_requests_total{protocol="v2-http",status="405"} 1.0' in text
    assert "resnest_requests_total{" not in text
