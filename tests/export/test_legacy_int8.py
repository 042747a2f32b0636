"""`resnest export --int8` from a legacy Paddle inference model laid out like PaddleClas's `*_infer.tar`
(`inference.pdmodel` + `inference.pdiparams`, saved by Paddle 2.x with the static graph): its
split-attention reshapes take their target from the runtime shape, which broke ONNX Runtime's quantizer
("Incomplete symbolic shape inference"). Now the targets are folded to constants at export, the int8 model
is written and runs at every batch size, and the accuracy check is recorded; and `resnest export` fails
with one line and exit status 2 on any error (a traceback only with --debug)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from resnest_serving.export.exporter import ExportOptions
from resnest_serving.export_command import export_model
from resnest_serving.pipeline.engines import AUTO_ORDER, RUNTIMES
from resnest_serving.protocol.bundle import ModelBundle
from resnest_serving.protocol.engine_options import EngineOptions
from support import REPO_ROOT, run_predictor

# PaddleClas's rSoftmax reads `batch, r, h, w = x.shape` and reshapes to [batch, cardinality, radix, r*h*w/...]:
# traced by Paddle 2.x's dy2static with a dynamic batch, that is Shape → Slice → Mul/Div → Cast → Concat →
# Reshape in the saved program. This script saves our ResNeSt with that forward, in the legacy format.
PADDLECLAS_STYLE_LEGACY = """
import sys, paddle
import paddle.nn.functional as F
from resnest_serving.export import resnest

def forward(self, x):
    if self.radix == 1:
        return F.sigmoid(x)
    shape = paddle.shape(x)
    batch, r, h, w = shape[0], shape[1], shape[2], shape[3]
    x = paddle.reshape(x, [batch, self.cardinality, self.radix,
                           paddle.cast(r * h * w / self.cardinality / self.radix, "int32")])
    x = F.softmax(paddle.transpose(x, [0, 2, 1, 3]), axis=1)
    return paddle.reshape(x, [batch, paddle.cast(r * h * w, "int32"), 1, 1])

resnest.RSoftmax.forward = forward
arch, size, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
paddle.seed(11)
model = resnest.build_model(arch)
model.eval()
paddle.jit.save(model, out + "/inference",
                input_spec=[paddle.static.InputSpec([None, 3, size, size], "float32", name="x")])
"""


def save_legacy(folder: Path, arch: str = "ResNeSt_tiny", size: int = 64) -> Path:
    subprocess.run([sys.executable, "-c", PADDLECLAS_STYLE_LEGACY, arch, str(size), str(folder)], check=True,
                   env={"FLAGS_enable_pir_api": "0", "PATH": "/usr/bin:/bin"}, cwd=REPO_ROOT, capture_output=True)
    assert sorted(p.name for p in folder.glob("inference.*")) == ["inference.pdiparams", "inference.pdiparams.info",
                                                                 "inference.pdmodel"]
    return folder


@pytest.fixture(scope="module")
def legacy_model(tmp_path_factory) -> Path:
    return save_legacy(tmp_path_factory.mktemp("legacy") / "ResNeSt_tiny_infer")


def computed_reshape_targets(path: Path) -> list[str]:
    graph = onnx.load(str(path)).graph
    constant = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in graph.node if n.op_type == "Reshape" and n.input[1] not in constant]


def test_int8_export_of_a_paddleclas_legacy_inference_model(legacy_model, tmp_path, image_paths, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the quantizer's failure used to leave sym_shape_infer_temp.onnx in the cwd
    calibration = {p.name: p.read_bytes() for p in image_paths}
    result = export_model(ExportOptions(arch="ResNeSt_tiny", out=tmp_path / "out", checkpoint=legacy_model,
                                        int8=True, calibration_images=calibration))
    server = result.server_dir
    assert (server / "inference.pdmodel").is_file() and result.meta.int8_onnx_file == "inference.int8.onnx"
    assert not computed_reshape_targets(server / "inference.onnx")  # folded at export
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    # fp32 ONNX answers like the legacy Paddle model; int8 runs at every batch size with the same top-1
    # (ONNX Runtime runs int8 on any x86 CPU, fast only with VNNI: this part needs no particular CPU).
    x = np.random.default_rng(2).standard_normal((5, 3, 64, 64)).astype(np.float32)
    fp32 = ort.InferenceSession(str(server / "inference.onnx"), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(server / "inference.int8.onnx"), providers=["CPUExecutionProvider"])
    for bs in (1, 2, 5):
        want = run_predictor(legacy_model, x[:bs])
        got = fp32.run(None, {"x": x[:bs]})[0]
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), bs
        assert np.array_equal(int8.run(None, {"x": x[:bs]})[0].argmax(1), want.argmax(1)), bs

    # The accuracy check: recorded for each engine that runs int8 on this CPU, the refusal for the others.
    bundle = ModelBundle.load(server)
    engines = result.meta.precision_checks["int8"]["engines"]
    for kind in AUTO_ORDER:
        why = RUNTIMES[kind].unavailable(bundle, EngineOptions(thread_num=1, precision="int8"))
        if why is None:
            check = engines[kind]["calibration"]
            assert check["images"] == len(calibration) and check["top1_agreement"] >= 0.8, (kind, check)
        else:
            assert engines[kind] == {"skipped": why}, kind


def resnest(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resnest_serving.cli", "export", "--arch", "ResNeSt_tiny", *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if " ERROR " in line]


def test_export_failures_are_one_line_and_exit_2(tmp_path, legacy_model):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "inference.pdmodel").write_bytes(b"not a program")  # Paddle itself would crash on it (SIGSEGV)
    (damaged / "inference.pdiparams").write_bytes((legacy_model / "inference.pdiparams").read_bytes())
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "inference.pdmodel").write_bytes((legacy_model / "inference.pdmodel").read_bytes())
    (truncated / "inference.pdiparams").write_bytes((legacy_model / "inference.pdiparams").read_bytes()[:1000])
    (tmp_path / "a-file").write_text("")
    cases = [
        (["--checkpoint", str(damaged)], "is not a Paddle inference model"),
        (["--checkpoint", str(truncated)], "RuntimeError: (Unavailable) An error occurred while loading model "
                                           "parameters"),
        (["--random-init", "--out", str(tmp_path / "a-file" / "sub")], "FileExistsError: [Errno 17] File exists"),
        (["--random-init", "--int8"], "--int8 needs calibration images"),
    ]
    for args, cause in cases:
        if "--out" not in args:
            args = [*args, "--out", str(tmp_path / "out")]
        proc = resnest(*args)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        errors = error_lines(proc)
        assert len(errors) == 1 and cause in errors[0], (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, args
    assert not (tmp_path / "out").exists()
    proc = resnest("--random-init", "--out", str(tmp_path / "a-file" / "sub"), "--debug")
    assert proc.returncode == 2 and "Traceback (most recent call last)" in proc.stderr
    assert "FileExistsError" in proc.stderr.splitlines()[-1]
