"""Engines: every engine agrees with the others at every batch size, on every variant and the demo model,
also under ONEDNN_MAX_CPU_ISA=AVX2 and AVX512_CORE; `auto` picks the first engine that works and falls
back past broken ones; a start-up failure names the engine, the batch size and the failing oneDNN
primitive; the worker process survives being killed; reduced precision is refused where the CPU (or the
ISA cap) lacks the instructions."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from support import REPO_ROOT

from export.model_files import EngineOptions
from pipeline.accuracy import preprocess_images
from pipeline.bundle import ModelBundle
from pipeline.engines import AUTO_ORDER, EngineError, EngineUnavailable, open_runtime, start_engines
from pipeline.engines.cpu import cpu_flags, precision_unsupported

ISA_CAPS = ("", "AVX2", "AVX512_CORE")  # "" = everything this CPU has


def start_matrix(models, isa: str, max_batch: int = 8) -> subprocess.Popen:
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": isa} if isa else {
        k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    return subprocess.Popen([sys.executable, "-m", "pipeline.engines.matrix", *map(str, models), "--json",
                             "--max-batch", str(max_batch)], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_every_engine_runs_every_variant_at_batch_1_to_8(variant_dirs, demo_export):
    """Under each ISA cap in its own process, side by side (model loading is mostly single-threaded)."""
    models = [demo_export.server_dir, *variant_dirs.values()]
    procs = {isa: start_matrix(models, isa) for isa in ISA_CAPS}
    for isa, proc in procs.items():
        out, err = proc.communicate(timeout=1800)
        rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert rows, err[-3000:]
        failed = [f"{isa or 'native'}: {r['arch']} {r['engine']} {r['precision']}: {r['why']}" for r in rows
                  if r["status"] == "failed"]
        assert not failed, "\n".join(failed)
        status = {(r["arch"], r["engine"], r["precision"]): r for r in rows}
        for arch in ("ResNeSt_tiny", *variant_dirs):
            for engine in AUTO_ORDER:
                assert status[(arch, engine, "fp32")]["status"] == "ok", (isa, arch, engine)
        for engine in ("openvino", "onnxruntime"):  # the demo bundle carries an int8 model
            row = status[("ResNeSt_tiny", engine, "int8")]
            assert row["status"] == "ok" or precision_unsupported("int8", engine != "onnxruntime") or (
                isa and f"ONEDNN_MAX_CPU_ISA={isa} rules out" in row["why"]), row
        if not isa and not precision_unsupported("bf16"):
            assert status[("ResNeSt50", "openvino", "bf16")]["status"] == "ok"
            assert status[("ResNeSt50", "paddle", "bf16")]["status"] == "ok"


def test_engines_agree_in_process(tiny_model_dir):
    bundle = ModelBundle.load(tiny_model_dir)
    x = np.random.default_rng(0).standard_normal((5, 3, 64, 64)).astype(np.float32)
    outputs = {}
    for kind in AUTO_ORDER:
        runtime, report = open_runtime(bundle, (kind,), EngineOptions(), 8)
        assert report.kind == kind and sorted(report.warm_up_ms) == list(range(1, 9))
        outputs[kind] = runtime.infer(x)
    for kind, out in outputs.items():
        assert np.abs(out - outputs["paddle"]).max() <= 1e-4 * np.abs(outputs["paddle"]).max(), kind


# -- a model that Paddle's oneDNN cannot run: the split-attention graph before the fix -------------------


def start(bundle, kind, precision="fp32", max_batch=4, concurrency=1):
    return asyncio.run(_start_and_close(bundle, kind, precision, max_batch, concurrency))


async def _start_and_close(bundle, kind, precision, max_batch, concurrency):
    engines = await start_engines(bundle, kind, EngineOptions(precision=precision), concurrency, max_batch)
    try:
        return [e.report for e in engines]
    finally:
        await asyncio.gather(*(e.close() for e in engines))


def test_startup_check_names_engine_batch_size_and_onednn_primitive(split_model_dir, monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "SSE41")  # this path fails on every x86 CPU (AVX-512 ones too)
    bundle = ModelBundle.load(split_model_dir)
    with pytest.raises(EngineError) as err:
        start(bundle, "paddle")
    text = str(err.value)
    assert "engine paddle (fp32" in text and "failed its start-up check at batch size 2" in text
    assert "[oneDNN memory: unsupported memory stride]" in text
    assert "What to change: use engine: openvino or onnxruntime" in text
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # the documented way out, for Paddle
    assert start(bundle, "paddle")[0].kind == "paddle"


def test_auto_falls_back_past_engines_that_fail(tiny_model_dir, tmp_path, caplog):
    broken = tmp_path / "serving_server"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "inference.onnx").write_bytes(b"not an onnx model")
    caplog.set_level(logging.INFO)
    report = start(ModelBundle.load(broken), "auto")[0]
    assert report.kind == "paddle"
    assert [s.split(":")[0] for s in report.skipped] == ["openvino", "onnxruntime"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("failed its start-up check, trying the next engine" in w for w in warnings)
    assert any("engine paddle fp32 chosen, auto" in r.getMessage() and "passed over: openvino" in r.getMessage()
               for r in caplog.records)


def test_auto_rules_out_engines_without_their_model_file(tiny_model_dir):
    bundle = ModelBundle.load(tiny_model_dir)
    no_onnx = replace(bundle, meta=replace(bundle.meta, onnx_file=""))
    report = start(no_onnx, "auto")[0]
    assert report.kind == "paddle" and "re-export without --no-onnx" in report.skipped[0]
    with pytest.raises(EngineUnavailable, match="engine onnxruntime cannot run fp32 here: .* has no ONNX model"):
        start(no_onnx, "onnxruntime")
    with pytest.raises(EngineError, match="unknown engine 'tvm'; choose one of auto, openvino, onnxruntime, paddle"):
        start(bundle, "tvm")


def test_concurrent_instances_use_the_engine_auto_chose(tiny_model_dir):
    reports = start(ModelBundle.load(tiny_model_dir), "auto", concurrency=2)
    assert [r.kind for r in reports] == [AUTO_ORDER[0]] * 2


def test_killed_worker_fails_its_batch_and_is_restarted(tiny_model_dir, caplog):
    bundle = ModelBundle.load(tiny_model_dir)
    x = np.random.default_rng(0).standard_normal((11, 3, 64, 64)).astype(np.float32)

    async def main():
        (engine,) = await start_engines(bundle, "onnxruntime", EngineOptions(), 1, 4)
        pids = [engine.pid]
        try:
            before = await engine.infer(x)  # 11 images in chunks of 4
            running = asyncio.create_task(engine.infer(x))
            await asyncio.sleep(0)  # the first chunk is with the worker now
            os.kill(engine.pid, signal.SIGKILL)
            with pytest.raises(EngineError, match=r"worker process died during a batch \(killed by SIGKILL\)"):
                await running
            after = await engine.infer(x)  # a new worker
            pids.append(engine.pid)
            os.kill(engine.pid, signal.SIGKILL)  # killed between batches: the next batch just gets a new one
            await asyncio.sleep(0.2)
            again = await engine.infer(x)
            pids.append(engine.pid)
            return before, after, again, pids
        finally:
            await engine.close()

    before, after, again, pids = asyncio.run(main())
    assert before.shape == (11, 10) and np.array_equal(before, after) and np.array_equal(before, again)
    assert len(set(pids)) == 3
    assert sum("the worker process is gone; starting a new one" in r.getMessage() for r in caplog.records) == 2


def test_closed_engine_leaves_no_process_or_shared_memory(tiny_model_dir):
    async def main():
        (engine,) = await start_engines(ModelBundle.load(tiny_model_dir), "paddle", EngineOptions(), 1, 2)
        pid, shm = engine.pid, engine._shm.name
        await engine.close()
        return pid, shm

    pid, shm = asyncio.run(main())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not os.path.exists(f"/dev/shm/{shm}")


# -- reduced precision ----------------------------------------------------------------------------------


def test_bf16_and_int8_are_refused_under_an_isa_cap(demo_export, monkeypatch):
    bundle = ModelBundle.load(demo_export.server_dir)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    with pytest.raises(EngineError, match="no engine can run this model at bf16: openvino: .*ONEDNN_MAX_CPU_ISA=AVX2 "
                                          "rules out the bf16 instructions"):
        start(bundle, "auto", "bf16")
    with pytest.raises(EngineUnavailable, match="engine openvino cannot run int8 here: ONEDNN_MAX_CPU_ISA=AVX2"):
        start(bundle, "openvino", "int8")
    if precision_unsupported("int8", onednn=False) is None:  # ONNX Runtime does not run on oneDNN
        assert start(bundle, "auto", "int8")[0].kind == "onnxruntime"


def test_engines_refuse_precisions_they_do_not_have(demo_export, tiny_model_dir):
    bundle = ModelBundle.load(demo_export.server_dir)
    with pytest.raises(EngineUnavailable, match="ONNX Runtime runs fp32 or int8 on CPU, not bf16; for bf16 use engine openvino or paddle"):
        start(bundle, "onnxruntime", "bf16")
    with pytest.raises(EngineUnavailable, match="Paddle Inference runs int8 on CPU only for models quantized"):
        start(bundle, "paddle", "int8")
    with pytest.raises(EngineUnavailable, match="has no int8 ONNX model; re-export with `resnest export --int8"):
        start(ModelBundle.load(tiny_model_dir), "openvino", "int8")


@pytest.mark.skipif(not any(f in cpu_flags() for f in ("avx512_bf16", "amx_bf16")), reason="CPU without bf16")
def test_bf16_serves_the_digits_like_fp32(demo_export, heldout_digits):
    bundle = ModelBundle.load(demo_export.server_dir)
    x = preprocess_images(bundle, heldout_digits[0])

    async def main():
        (fp32,) = await start_engines(bundle, "auto", EngineOptions(), 1, 8)
        (bf16,) = await start_engines(bundle, "auto", EngineOptions(precision="bf16"), 1, 8)
        try:
            return fp32.report, bf16.report, await fp32.infer(x), await bf16.infer(x)
        finally:
            await fp32.close()
            await bf16.close()

    fp32_report, bf16_report, a, b = asyncio.run(main())
    assert (fp32_report.kind, bf16_report.precision) == ("openvino", "bf16")
    assert np.mean(a.argmax(1) == b.argmax(1)) >= 0.99


def test_int8_export_records_its_accuracy_check(demo_export):
    meta = demo_export.meta
    assert meta.int8_onnx_file == "inference.int8.onnx" and (demo_export.server_dir / meta.int8_onnx_file).is_file()
    checked = 0
    for precision in ("bf16", "int8"):
        for kind, check in meta.precision_checks[precision]["engines"].items():
            if "skipped" in check:
                continue
            assert "error" not in check, (precision, kind, check)
            digits = check["digits-heldout"]
            assert digits["images"] == 296 and digits["top1_agreement"] >= 0.99, (precision, kind, digits)
            assert check["shared-images"]["images"] == 5
            checked += 1
    if precision_unsupported("int8", onednn=False) is None:
        assert checked >= 1  # ONNX Runtime int8 at least


def test_a_cancelled_call_does_not_leak_into_the_next(tiny_model_dir):
    """A caller that gives up mid-batch (op timeout, shutdown) leaves its reply behind; the next call must
    get its own answer, not the stale one."""
    bundle = ModelBundle.load(tiny_model_dir)
    rng = np.random.default_rng(3)
    first, second = (rng.standard_normal((8, 3, 64, 64)).astype(np.float32) for _ in range(2))
    runtime, _ = open_runtime(bundle, ("paddle",), EngineOptions(), 8)
    want = runtime.infer(second)

    async def main():
        (engine,) = await start_engines(bundle, "paddle", EngineOptions(), 1, 8)
        try:
            task = asyncio.create_task(engine.infer(first))
            await asyncio.sleep(0)  # the batch is with the worker
            task.cancel()
            return await engine.infer(second)
        finally:
            await engine.close()

    got = asyncio.run(main())
    assert np.abs(got - want).max() <= 1e-5
