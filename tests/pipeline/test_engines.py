"""Engines: every engine agrees with the others at every batch size, on every variant and the demo model,
also under ONEDNN_MAX_CPU_ISA=AVX2 and AVX512_CORE; `auto` picks the first engine that works and falls
back past broken ones; a start-up failure names the engine, the batch size and the failing oneDNN
primitive; the worker process survives being killed; reduced precision is refused where the CPU (or the
ISA cap) lacks the instructions.

No test here depends on which instructions this CPU has: a test of bf16 or int8 runs it where the CPU (as
`pipeline.engines.cpu.cpu_flags` sees it) has the instructions and checks the refusal where it does not,
with the text `precision_unsupported` gives; RESNEST_CPU_FLAGS takes flags away to test the refusals on
any CPU (tests only)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from resnest_serving.pipeline.accuracy import preprocess_images
from resnest_serving.pipeline.engines import (
    AUTO_ORDER,
    RUNTIMES,
    EngineError,
    EngineUnavailable,
    open_runtime,
    start_engines,
)
from resnest_serving.pipeline.engines.base import infer_batch
from resnest_serving.pipeline.engines.cpu import (
    BF16_FLAGS,
    FLAGS_OVERRIDE,
    INT8_FLAGS,
    cpu_flags,
    describe,
    precision_unsupported,
)
from resnest_serving.protocol.bundle import ModelBundle
from resnest_serving.protocol.engine_options import EngineOptions
from support import REPO_ROOT

ISA_CAPS = ("", "AVX2", "AVX512_CORE")  # "" = everything this CPU has
NO_BF16_NO_VNNI = ",".join(f"-{flag}" for flag in (*BF16_FLAGS, *INT8_FLAGS))


def expected_why(bundle: ModelBundle, engine: str, precision: str, isa: str) -> str | None:
    """What `unavailable` says for this engine and precision under the ISA cap `isa` ("" = none), computed
    here with the cap set as the matrix process has it."""
    saved = os.environ.pop("ONEDNN_MAX_CPU_ISA", None)
    try:
        if isa:
            os.environ["ONEDNN_MAX_CPU_ISA"] = isa
        return RUNTIMES[engine].unavailable(bundle, EngineOptions(thread_num=1, precision=precision))
    finally:
        os.environ.pop("ONEDNN_MAX_CPU_ISA", None)
        if saved is not None:
            os.environ["ONEDNN_MAX_CPU_ISA"] = saved


def start_matrix(models, isa: str, max_batch: int = 8) -> subprocess.Popen:
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": isa} if isa else {
        k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    return subprocess.Popen([sys.executable, "-m", "resnest_serving.pipeline.engines.matrix", *map(str, models), "--json",
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
        # Every reduced-precision row: run ("ok") exactly where the CPU and the cap allow it, else refused
        # with the reason the engine gives for this CPU under this cap (the demo bundle carries int8).
        for model in models:
            bundle = ModelBundle.load(model)
            for engine in AUTO_ORDER:
                for precision in ("bf16", "int8"):
                    row = status[(bundle.meta.arch, engine, precision)]
                    why = expected_why(bundle, engine, precision, isa)
                    want = ("ok", None) if why is None else ("unavailable", why)
                    assert (row["status"], row.get("why")) == want, (isa, row)


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


def test_requests_assembled_in_shared_memory_get_their_own_rows(tiny_model_dir):
    """The batcher hands a batch's requests as parts (`infer_batch`): each is copied straight into the shared
    rows, chunked at max_batch across request boundaries, and gets the rows one concatenated batch gets; parts
    of both forms in one batch are refused with what the engine takes, and the engine keeps serving."""
    bundle = ModelBundle.load(tiny_model_dir)
    rng = np.random.default_rng(5)
    parts = [rng.integers(0, 256, (n, 64, 64, 3), np.uint8) for n in (1, 3, 2, 5)]
    runtime, _ = open_runtime(bundle, ("onnxruntime",), EngineOptions(), 4)
    want = np.concatenate([runtime.infer(part) for part in parts])

    async def main():
        (engine,) = await start_engines(bundle, "onnxruntime", EngineOptions(), 1, 4)
        try:
            got = await infer_batch(engine, parts)
            with pytest.raises(EngineError, match=r"one form per batch"):
                await infer_batch(engine, [parts[0], runtime.normalize(parts[1])])
            return got, await infer_batch(engine, parts[:1])
        finally:
            await engine.close()

    got, first = asyncio.run(main())
    assert got.shape == (11, 10) and np.abs(got - want).max() <= 1e-5
    assert np.abs(first - want[:1]).max() <= 1e-5


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
    """The cap is named on every CPU (after the CPU's own lack, where it has that too)."""
    bundle = ModelBundle.load(demo_export.server_dir)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    with pytest.raises(EngineError, match="no engine can run this model at bf16: openvino: .*ONEDNN_MAX_CPU_ISA=AVX2 "
                                          "rules out the bf16 instructions"):
        start(bundle, "auto", "bf16")
    with pytest.raises(EngineUnavailable, match="engine openvino cannot run int8 here: .*ONEDNN_MAX_CPU_ISA=AVX2 "
                                                "rules out the VNNI instructions int8 needs"):
        start(bundle, "openvino", "int8")
    why = precision_unsupported("int8", onednn=False)  # ONNX Runtime does not run on oneDNN: the cap spares it
    if why is None:
        assert start(bundle, "auto", "int8")[0].kind == "onnxruntime"
    else:
        assert "has no int8 dot-product instructions" in why
        with pytest.raises(EngineError, match="no engine can run this model at int8") as err:
            start(bundle, "auto", "int8")
        assert f"onnxruntime: {why}" in str(err.value)


def test_the_flags_override_takes_flags_away_adds_and_replaces(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)  # the suite may run under a cap or the override
    monkeypatch.delenv(FLAGS_OVERRIDE, raising=False)
    real = cpu_flags()
    monkeypatch.setenv(FLAGS_OVERRIDE, NO_BF16_NO_VNNI)
    assert cpu_flags() == real - {*BF16_FLAGS, *INT8_FLAGS}
    assert f"{FLAGS_OVERRIDE}='{NO_BF16_NO_VNNI}' (tests only)" in describe()
    monkeypatch.setenv(FLAGS_OVERRIDE, "-AVX512_BF16 +amx_int8")
    assert cpu_flags() == (real - {"avx512_bf16"}) | {"amx_int8"}
    monkeypatch.setenv(FLAGS_OVERRIDE, "avx2, avx512f +avx512_vnni")
    assert cpu_flags() == {"avx2", "avx512f", "avx512_vnni"}
    assert precision_unsupported("int8") is None and "has no bf16 instructions" in precision_unsupported("bf16")
    monkeypatch.setenv(FLAGS_OVERRIDE, "none")
    assert cpu_flags() == frozenset()
    monkeypatch.setenv(FLAGS_OVERRIDE, "  ")
    assert cpu_flags() == real and FLAGS_OVERRIDE not in describe()


def test_no_bf16_no_vnni_override_refuses_in_the_worker_process(demo_export, monkeypatch, caplog):
    """Claiming a CPU without bf16 and VNNI refuses both precisions on every engine, with the same text on
    every machine; the refusal is decided inside the worker process, so the override reaches it."""
    caplog.set_level(logging.INFO)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv(FLAGS_OVERRIDE, NO_BF16_NO_VNNI)
    bundle = ModelBundle.load(demo_export.server_dir)
    note = f"flags as {FLAGS_OVERRIDE}='{NO_BF16_NO_VNNI}' says) "
    with pytest.raises(EngineError, match="no engine can run this model at bf16") as err:
        start(bundle, "auto", "bf16")
    text = str(err.value)
    for engine in ("openvino", "paddle"):
        assert re.search(f"{engine}: this CPU \\(.*{re.escape(note)}has no bf16 instructions \\(avx512_bf16 or "
                         "amx_bf16\\); bf16 would be emulated, slower than fp32", text), text
    with pytest.raises(EngineError, match="no engine can run this model at int8") as err:
        start(bundle, "auto", "int8")
    for engine in ("openvino", "onnxruntime"):
        assert re.search(f"{engine}: this CPU \\(.*{re.escape(note)}has no int8 dot-product instructions "
                         "\\(avx512_vnni or avx_vnni or amx_int8\\); int8 would be no faster than fp32", str(err.value))
    with pytest.raises(EngineUnavailable, match=f"engine onnxruntime cannot run int8 here: this CPU .*{re.escape(note)}"):
        start(bundle, "onnxruntime", "int8")
    assert any(f"{FLAGS_OVERRIDE}='{NO_BF16_NO_VNNI}' (tests only)" in r.getMessage() for r in caplog.records)
    assert start(bundle, "auto")[0].precision == "fp32"  # fp32 needs none of them


def test_engines_refuse_precisions_they_do_not_have(demo_export, tiny_model_dir):
    bundle = ModelBundle.load(demo_export.server_dir)
    with pytest.raises(EngineUnavailable, match="ONNX Runtime runs fp32 or int8 on CPU, not bf16; for bf16 use engine openvino or paddle"):
        start(bundle, "onnxruntime", "bf16")
    with pytest.raises(EngineUnavailable, match="Paddle Inference runs int8 on CPU only for models quantized"):
        start(bundle, "paddle", "int8")
    with pytest.raises(EngineUnavailable, match="has no int8 ONNX model; re-export with `resnest export --int8"):
        start(ModelBundle.load(tiny_model_dir), "openvino", "int8")


def test_bf16_serves_the_digits_like_fp32(demo_export, heldout_digits):
    """Where the CPU has bf16 (and no cap or override rules it out): served on OpenVINO with the digits' answers
    of fp32. Elsewhere: refused at start-up by every engine that could run it, with the reason."""
    bundle = ModelBundle.load(demo_export.server_dir)
    x = preprocess_images(bundle, heldout_digits[0])
    why = precision_unsupported("bf16")

    async def main():
        (fp32,) = await start_engines(bundle, "auto", EngineOptions(), 1, 8)
        try:
            (bf16,) = await start_engines(bundle, "auto", EngineOptions(precision="bf16"), 1, 8)
        except BaseException:
            await fp32.close()
            raise
        try:
            return fp32.report, bf16.report, await fp32.infer(x), await bf16.infer(x)
        finally:
            await fp32.close()
            await bf16.close()

    if why is not None:
        with pytest.raises(EngineError, match="no engine can run this model at bf16") as err:
            asyncio.run(main())
        assert f"openvino: {why}" in str(err.value) and f"paddle: {why}" in str(err.value)
        return
    fp32_report, bf16_report, a, b = asyncio.run(main())
    assert (fp32_report.kind, bf16_report.kind, bf16_report.precision) == ("openvino", "openvino", "bf16")
    assert np.mean(a.argmax(1) == b.argmax(1)) >= 0.99


def test_int8_export_records_its_accuracy_check(demo_export):
    """Each engine's check is recorded exactly where it can run that precision here, and skipped with its
    reason elsewhere: on a CPU with VNNI at least ONNX Runtime's int8, on one without it, the refusal."""
    meta = demo_export.meta
    bundle = ModelBundle.load(demo_export.server_dir)
    assert meta.int8_onnx_file == "inference.int8.onnx" and (demo_export.server_dir / meta.int8_onnx_file).is_file()
    assert meta.precision_checks["int8"]["cpu"] == describe()
    checked = set()
    for precision in ("bf16", "int8"):
        engines = meta.precision_checks[precision]["engines"]
        assert sorted(engines) == sorted(AUTO_ORDER)
        for kind, check in engines.items():
            why = RUNTIMES[kind].unavailable(bundle, EngineOptions(thread_num=1, precision=precision))
            if why is not None:
                assert check == {"skipped": why}, (precision, kind)
                continue
            assert "error" not in check and "skipped" not in check, (precision, kind, check)
            digits = check["digits-heldout"]
            assert digits["images"] == 296 and digits["top1_agreement"] >= 0.99, (precision, kind, digits)
            assert check["shared-images"]["images"] == 5
            checked.add((precision, kind))
    why = precision_unsupported("int8", onednn=False)
    if why is None:
        assert ("int8", "onnxruntime") in checked
    else:
        assert meta.precision_checks["int8"]["engines"]["onnxruntime"] == {"skipped": why}
        assert "has no int8 dot-product instructions" in why


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


def test_split_streams_never_exceed_the_threads():
    from resnest_serving.pipeline.engines.openvino_runtime import split_streams

    assert split_streams(EngineOptions(thread_num=2)) == 1  # the default: no split
    assert split_streams(EngineOptions(thread_num=4, batch_streams=3)) == 3
    assert split_streams(EngineOptions(thread_num=2, batch_streams=8)) == 2
    assert split_streams(EngineOptions(thread_num=1, batch_streams=2)) == 1


def test_openvino_split_batches_get_the_unsplit_answers(tiny_model_dir, image_paths):
    """With batch_streams 2, a batch of 2+ images runs as parts on two streams in parallel (uneven batches
    too) and a lone image on the one-stream model; every answer equals the unsplit engine's, pixels and
    float input alike."""
    if RUNTIMES["openvino"].unavailable(ModelBundle.load(tiny_model_dir), EngineOptions()):
        pytest.skip("OpenVINO is not installed")
    bundle = ModelBundle.load(tiny_model_dir)
    images = {p.name: p.read_bytes() for p in image_paths}
    pixels = preprocess_images(bundle, images, pixels=True)
    pixels = np.concatenate([pixels, pixels[::-1]])[:7]
    tensors = preprocess_images(bundle, images)
    split, report = open_runtime(bundle, ("openvino",), EngineOptions(thread_num=2, batch_streams=2), 8)
    whole, _ = open_runtime(bundle, ("openvino",), EngineOptions(thread_num=2, batch_streams=1), 8)
    try:
        assert "batches of 2+ split over 2 streams" in report.summary and len(split.split_requests) == 2
        assert not whole.split_requests and "split" not in whole.detail
        for n in (1, 2, 3, 7):
            assert np.abs(split.infer(pixels[:n]) - whole.infer(pixels[:n])).max() <= 1e-5, n
        assert [r.get_output_tensor(0).shape[0] for r in split.split_requests] == [4, 3]  # the last batch, split
        assert np.abs(split.infer(tensors[:3]) - whole.infer(tensors[:3])).max() <= 1e-5
        assert [r.get_output_tensor(0).shape[0] for r in split.split_requests] == [2, 1]
    finally:
        split.close()
        whole.close()
