"""The soak test (bench/soak.py) in short (issue #11): ~24 s of valid and hostile requests over gRPC, REST and
bRPC against a tiny-model server; every request answered as documented, and the server's RSS flat (median
of the last quarter within 10 % of the median right after warm-up)."""

from __future__ import annotations

import pytest

from bench.soak import run_soak
from bench.soak_requests import SCENARIOS, Target

LIMIT = 4 * 1024 * 1024
READ_TIMEOUT_S = 2.0


@pytest.fixture
def soak_server(server_factory, monkeypatch):
    # glibc's dynamic mmap threshold keeps freed multi-MiB request buffers in the heap, so RSS swings by tens
    # of percent with the mix of requests; a fixed 1 MiB threshold returns them at once and RSS tracks live
    # memory (a leak still shows). The server inherits the environment.
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(1024 * 1024))
    return server_factory(op={"batch_size": 4, "auto_batching_timeout": 2},
                          top={"max_request_bytes": LIMIT, "request_read_timeout_s": READ_TIMEOUT_S})


def test_soak_answers_everything_and_memory_stays_flat(soak_server, image_paths):
    server = soak_server
    target = Target("127.0.0.1", server.ports, LIMIT, READ_TIMEOUT_S, server.proc.pid)
    report = run_soak(target, [p.read_bytes() for p in image_paths], duration_s=24.0, warmup_s=8.0,
                      concurrency=3, seed=1, server_proc=server.proc, sample_interval_s=0.25)
    text = report.text()
    print(text)
    assert report.server_exit is None and server.proc.poll() is None, text + server.log[-3000:]
    assert report.count("no answer") == 0, text  # no dropped or hung request
    assert report.count("unexpected") == 0, text
    assert report.count("ok") > 20 and report.count("refused") > 10, text
    ran = {scenario.split("/")[0] for scenario, _ in report.outcomes}
    assert ran == {name for name, _, _ in SCENARIOS}, text  # every kind of request was sent at least once
    verdict, after_warmup, end = report.rss_verdict()
    assert verdict == "PASS", text
    assert end <= 1.10 * after_warmup
    assert "Traceback" not in server.log, server.log[-3000:]
