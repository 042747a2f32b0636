"""The benchmarks' own arithmetic: the engine table's median and min–max over rounds, the per-process and
per-thread CPU reading that splits a served request's cost into front door (event-loop thread, other threads)
and engine workers, the stage split of py-spy's stacks, and the batch-size comparison's round ratios."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from bench.batching import batch_table
from bench.engines import table
from bench.load_points import process_tree_cpu
from bench.stages import GRPC_POLLER, REST, classify, sample_shares, stage_table


def test_engine_table_reports_median_and_range_over_rounds():
    rounds = [{"ms": {"1": 10.0, "4": 24.0}}, {"ms": {"1": 12.0, "4": 20.0}}, {"ms": {"1": 30.0, "4": 28.0}}]
    runs = {("paddle", "fp32"): rounds, ("openvino", "int8"): [{"error": "no VNNI here"}] * 3}
    lines, rows = table("ResNeSt_tiny", 64, 1.0, 100.0, [1, 4], runs)
    paddle = rows[0]["ms_per_image"]
    assert paddle["1"] == {"median": 12.0, "min": 10.0, "max": 30.0}
    assert paddle["4"] == {"median": 6.0, "min": 5.0, "max": 7.0}
    assert "| paddle fp32 | 12.0 [10.0–30.0] (83.3) | 6.0 [5.0–7.0] (166.7) |" in lines[2]
    assert rows[1] == {"arch": "ResNeSt_tiny", "engine": "openvino", "precision": "int8", "error": "no VNNI here"}


def test_process_tree_cpu_counts_the_children_apart():
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                              "while time.process_time() - t < 0.5: pass\ntime.sleep(30)"])
    try:
        time.sleep(1.5)
        cpu = process_tree_cpu(os.getpid())
        assert cpu["engine workers"] >= 0.4  # the busy child, counted under the parent's children
        assert cpu["front door"] > 0
    finally:
        child.kill()
        child.wait()


def test_process_tree_cpu_splits_the_event_loop_thread_from_the_others():
    def burn() -> None:
        started = time.thread_time()
        while time.thread_time() - started < 0.4:
            pass

    before = process_tree_cpu(os.getpid())
    worker = threading.Thread(target=burn)
    worker.start()
    worker.join()
    after = process_tree_cpu(os.getpid())
    assert after["other threads"] - before["other threads"] >= 0.3  # the thread that burned, not this one
    assert after["event-loop thread"] - before["event-loop thread"] < 0.3  # this thread only waited


RAW = """\
thread (100): MainThread;run_forever (/usr/lib/python3.11/asyncio/base_events.py:607);select (/usr/lib/python3.11/selectors.py:468) 30
thread (100): MainThread;_run_once (/usr/lib/python3.11/asyncio/base_events.py:1922);inference (/r/serving/doors/grpc_door.py:40);SerializeToString (/x/google/protobuf/message.py:1) 20
thread (100): MainThread;_run_once (/usr/lib/python3.11/asyncio/base_events.py:1922);_wake (/r/pipeline/engines/worker.py:12) 10
thread (100): MainThread;_run_once (/usr/lib/python3.11/asyncio/base_events.py:1922);Handle._run (/usr/lib/python3.11/asyncio/events.py:80) 40
thread (101): preprocess_0;_worker (/usr/lib/python3.11/concurrent/futures/thread.py:81);Pipeline._prepare (/r/pipeline/pipeline.py:300);Preprocessor.pixels_from_bytes (/r/pipeline/preprocess.py:160);decode_image (/r/pipeline/preprocess.py:120);read_header (/r/pipeline/preprocess.py:90);open (/x/PIL/Image.py:3000) 25
thread (101): preprocess_0;_worker (/usr/lib/python3.11/concurrent/futures/thread.py:81);Pipeline._prepare (/r/pipeline/pipeline.py:300);Preprocessor.pixels_from_bytes (/r/pipeline/preprocess.py:160);Preprocessor.pixels_from_bgr (/r/pipeline/preprocess.py:170);Preprocessor.resize_crop (/r/pipeline/preprocess.py:150) 25
thread (102): Thread-1 (_poll_wrapper);Thread._bootstrap (/usr/lib/python3.11/threading.py:1002);Thread.run (/usr/lib/python3.11/threading.py:982) 100
thread (101): preprocess_0;_call_set_state (/usr/lib/python3.11/asyncio/futures.py:403);BaseEventLoop.call_soon_threadsafe (/usr/lib/python3.11/asyncio/base_events.py:812);_write_to_self (/usr/lib/python3.11/asyncio/selector_events.py:139) 50
"""


def test_stage_split_takes_the_innermost_frame_of_a_stage_and_falls_back_to_the_event_loop(tmp_path):
    assert classify(["decode_image (/r/pipeline/preprocess.py:1)", "read_header (/r/pipeline/preprocess.py:2)"]) \
        == "image header check"  # the innermost stage frame decides
    assert classify(["run_forever (/usr/lib/python3.11/asyncio/base_events.py:607)"]) == REST
    raw = tmp_path / "raw.txt"
    raw.write_text(RAW)
    shares = sample_shares(raw, loop_tid=100)
    loop, other = shares["event-loop thread"], shares["other threads"]
    assert loop["event loop: epoll + GIL re-acquire"] == 0.3 and loop["protocol parsing + response encoding"] == 0.2
    assert loop["engine hand-off (shared memory, wake-up)"] == 0.1 and loop[REST] == 0.4
    assert other == {"image header check": 0.125, "resize + crop + RGB": 0.125, GRPC_POLLER: 0.5,
                     "thread -> event loop wake-up (call_soon_threadsafe, self-pipe)": 0.25}
    point = {"profile": str(raw), "server_pid": 100, "server": {"stages_ms": {"engine": {"count": 3, "mean_ms": 1.5}}},
             "cpu_ms_per_request": {"front door": 3.0, "event-loop thread": 1.0, "other threads": 2.0,
                                    "engine workers": 4.0}}
    lines = stage_table({"grpc c1": point})
    assert "| resize + crop + RGB | 0.25 (0.00 + 0.25) |" in lines
    assert "| protocol parsing + response encoding | 0.20 (0.20 + 0.00) |" in lines
    assert "| wall ms: engine (per batch, /metrics) | 1.50 |" in lines


def test_batch_table_gives_medians_and_the_ratio_of_each_round():
    def run(ips: float) -> dict:
        return {"images_per_s": ips, "latency_ms": {"p50": 1000 / ips}}

    rounds = {("grpc", 1): {"batch_size 1": [run(100), run(50), run(80)],
                            "batch_size 4": [run(110), run(45), run(80)]}}
    lines = batch_table({"auto:fp32": rounds})
    assert lines[0] == "| config | point | batch_size 1 | batch_size 4 |"
    assert lines[2] == ("| auto:fp32 | grpc c1 | 80.00 img/s, p50 12.5 ms | 80.00 img/s, p50 12.5 ms, "
                        "×1.00 (0.90–1.10) |")


def test_bound_takes_the_best_batch_the_load_allows_and_the_mean_of_before_and_after():
    """At one request in flight the server can only form batches of 1: the bound uses batch 1's time there,
    the best of the batches <= min(concurrency, batch_size) elsewhere, averaged over the two measurements."""
    from bench.served import bound

    before = {"ms_per_image": {1: 8.0, 4: 6.0, 8: 5.0}, "preprocess_ms": 2.0}
    after = {"ms_per_image": {1: 10.0, 4: 7.0, 8: 5.5}, "preprocess_ms": 2.0}
    alone = {"before": before, "after": after}
    assert bound(alone, 1) == pytest.approx(1000 / 11.0)  # (10 + 12) / 2 ms per image
    assert bound(alone, 4) == pytest.approx(1000 / 8.5)  # (8 + 9) / 2
    assert bound(alone, 16) == pytest.approx(1000 / 7.25)  # batch 8: (7 + 7.5) / 2
    assert bound({"before": {"ms_per_image": {4: 6.0}, "preprocess_ms": 2.0}}, 1) == pytest.approx(125.0)


def test_compare_takes_op_and_local_service_conf_keys():
    import argparse

    from bench.batching import variants_of

    def of(**kw):
        return variants_of(argparse.Namespace(**{"compare": None, "batch_sizes": None, **kw}))

    assert of(batch_sizes=[1, 4]) == {"batch_size 1": {"batch_size": 1}, "batch_size 4": {"batch_size": 4}}
    assert of(compare="local_service_conf.batch_streams=1,2") == {
        "local_service_conf.batch_streams 1": {"lsc": {"batch_streams": 1}},
        "local_service_conf.batch_streams 2": {"lsc": {"batch_streams": 2}}}
    assert of(compare="jpeg_dct_scaling=false,true")["jpeg_dct_scaling true"] == {"jpeg_dct_scaling": True}
    assert of(compare="engine=openvino,onnxruntime") == {"engine openvino": {"engine": "openvino"},
                                                         "engine onnxruntime": {"engine": "onnxruntime"}}
    with pytest.raises(SystemExit, match="expected KEY=VALUE1,VALUE2"):
        of(compare="batch_size=4")


def test_cores_times_the_work_alone_and_beside_each_other_cpu():
    """bench.cores: a block per round alone and per other CPU busy, and the affinity given back afterwards."""
    from bench.cores import measure

    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2:
        with pytest.raises(SystemExit, match="one CPU only"):
            measure(lambda: None, rounds=1, calls=2)
        return
    calls = []
    results = measure(lambda: calls.append(os.sched_getaffinity(0)), rounds=2, calls=3)
    assert set(results) == {"alone"} | {f"CPU {cpu} busy" for cpu in sorted(cpus)[1:]}
    assert all(len(blocks) == 2 and all(ms >= 0 for ms in blocks) for blocks in results.values())
    assert all(seen == {min(cpus)} for seen in calls)  # the work ran pinned to the first CPU
    assert os.sched_getaffinity(0) == cpus
