"""`resnest export`: files written, outputs equal the dygraph model, atomic failure, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

from resnest_serving.cli import main as resnest_main
from resnest_serving.export.exporter import ExportError, ExportOptions, export
from resnest_serving.export.resnest import build_model
from resnest_serving.protocol.serving_config import read_config
from support import run_predictor


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_tiny_export_layout(tiny_export, label_file):
    server, client = tiny_export.server_dir, tiny_export.client_dir
    assert sorted(p.name for p in client.iterdir()) == ["serving_client_conf.prototxt",
                                                         "serving_client_conf.stream.prototxt"]
    names = {p.name for p in server.iterdir()}
    assert {"inference.json", "inference.pdiparams", "serving_server_conf.prototxt",
            "serving_server_conf.stream.prototxt", "resnest_meta.json", label_file.name,
            "inference.onnx"} <= names
    config = read_config(server)
    feed, fetch = config.feed_var[0], config.fetch_var[0]
    assert (feed.name, feed.alias_name, feed.feed_type, list(feed.shape)) == ("x", "x", 1, [3, 64, 64])
    assert (fetch.alias_name, fetch.fetch_type, list(fetch.shape)) == ("prediction", 1, [10])
    assert (server / "serving_server_conf.prototxt").read_text() == (client / "serving_client_conf.prototxt").read_text()
    meta = json.loads((server / "resnest_meta.json").read_text())
    assert (meta["arch"], meta["resize_short"], meta["crop_size"], meta["softmax"]) == ("ResNeSt_tiny", 72, 64, True)
    assert not list(server.parent.parent.glob(".*tmp*"))  # no temporary dir left behind


@pytest.mark.parametrize("arch,softmax", [("ResNeSt_tiny", True), ("ResNeSt_tiny", False),
                                          ("ResNeSt50_fast_1s1x64d", False)])
def test_exported_model_equals_dygraph(tmp_path, arch, softmax):
    paddle.seed(3)
    model = build_model(arch)
    ckpt = tmp_path / "model.pdparams"
    paddle.save(model.state_dict(), str(ckpt))
    result = export(ExportOptions(arch=arch, out=tmp_path / "out", checkpoint=ckpt, softmax=softmax))
    size = result.meta.crop_size
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    with paddle.no_grad():
        want = model(paddle.to_tensor(x))
        want = (paddle.nn.functional.softmax(want, axis=-1) if softmax else want).numpy()
    assert_close(run_predictor(result.server_dir, x), want)


def test_legacy_pdmodel_dir_exports_and_loads(tmp_path):
    """A legacy .pdmodel + .pdiparams dir (as in PaddleClas's *_infer.tar) becomes a serving dir."""
    legacy = tmp_path / "legacy"
    code = ("import sys, paddle; from export.resnest import build_model; paddle.seed(5); "
            "m = build_model('ResNeSt_tiny'); paddle.save(m.state_dict(), sys.argv[2]); "
            "paddle.jit.save(m, sys.argv[1] + '/inference', "
            "input_spec=[paddle.static.InputSpec([None, 3, 64, 64], 'float32', name='x')])")
    env = {"FLAGS_enable_pir_api": "0", "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code, str(legacy), str(tmp_path / "w.pdparams")], check=True,
                   env=env, cwd=Path(__file__).resolve().parents[2], capture_output=True)
    assert (legacy / "inference.pdmodel").is_file()
    result = export(ExportOptions(arch="ResNeSt_tiny", out=tmp_path / "out", checkpoint=legacy))
    assert (result.server_dir / "inference.pdmodel").is_file()
    model = build_model("ResNeSt_tiny")
    model.set_state_dict(paddle.load(str(tmp_path / "w.pdparams")))
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    assert_close(run_predictor(result.server_dir, x), model(paddle.to_tensor(x)).numpy())
    assert read_config(result.server_dir).fetch_var[0].alias_name == "prediction"


def test_failed_export_leaves_nothing(tmp_path):
    bad = tmp_path / "bad.pdparams"
    bad.write_bytes(b"this is not a checkpoint")
    out = tmp_path / "out"
    with pytest.raises(ValueError):
        export(ExportOptions(arch="ResNeSt_tiny", out=out, checkpoint=bad))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pdparams"]


def test_existing_output_needs_force(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(ExportError, match="exists; pass --force"):
        export(ExportOptions(arch="ResNeSt_tiny", out=tmp_path / "out", random_init=True))
    export(ExportOptions(arch="ResNeSt_tiny", out=tmp_path / "out", random_init=True, force=True))
    assert (tmp_path / "out" / "serving_server" / "inference.json").is_file()


@pytest.mark.parametrize("kwargs,message", [
    ({"random_init": True, "checkpoint": Path("x.pdparams")}, "exactly one of"),
    ({}, "exactly one of"),
    ({"checkpoint": Path("/nonexistent.pdparams")}, "does not exist"),
    ({"random_init": True, "label_file": Path("/nonexistent.txt")}, "label file"),
    ({"random_init": True, "arch": "ResNeSt42"}, "unknown ResNeSt variant"),
    ({"random_init": True, "calibration_images": {"a.png": b""}}, "give a BundleRunner"),  # export/ runs no engines
])
def test_bad_options(tmp_path, kwargs, message):
    opts = {"arch": "ResNeSt_tiny", "out": tmp_path / "out", **kwargs}
    with pytest.raises(ValueError, match=message):
        export(ExportOptions(**opts))


def test_wrong_file_type(tmp_path):
    ckpt = tmp_path / "model.h5"
    ckpt.write_bytes(b"\0" * 10)
    with pytest.raises(ExportError, match="unsupported file type '.h5'"):
        export(ExportOptions(arch="ResNeSt_tiny", out=tmp_path / "out", checkpoint=ckpt))


def test_cli_export_and_error_exit_code(tmp_path, capfd):
    out = tmp_path / "cli"
    assert resnest_main(["export", "--arch", "ResNeSt_tiny", "--random-init", "--out", str(out),
                         "--fetch-alias", "probs", "--feed-alias", "image"]) == 0
    config = read_config(out / "serving_server")
    assert (config.feed_var[0].alias_name, config.fetch_var[0].alias_name) == ("image", "probs")
    assert resnest_main(["export", "--arch", "ResNeSt_tiny", "--random-init", "--out", str(out)]) == 2
    assert "exists; pass --force" in capfd.readouterr().err


def test_ceil_mode_shortcut_dropped_only_where_it_is_a_no_op(tmp_path):
    """PyTorch sources build the shortcut pool in ceil mode; at sizes divisible by 32 the exporter uses floor
    mode (identical there, and faster under oneDNN), and the exported output still equals the ceil-mode net."""
    from resnest_serving.export.exporter import _save_inference_model

    paddle.seed(11)
    model = build_model("ResNeSt_tiny", shortcut_ceil_mode=True, avg_pool_exclusive=False)
    x = np.random.default_rng(2).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with paddle.no_grad():
        want = model(paddle.to_tensor(x)).numpy()
    model_file, _ = _save_inference_model(model, model.spec, softmax=False, server_dir=tmp_path)
    assert_close(run_predictor(tmp_path, x), want)
    pools = [m for m in model.sublayers() if isinstance(m, paddle.nn.AvgPool2D) and m.ksize == m.stride]
    assert pools and not any(p.ceil_mode for p in pools)


def test_paddle3_json_model_dir_as_checkpoint(tiny_export, tmp_path):
    """An exported (Paddle 3 `.json` + `.pdiparams`) model dir is a valid --checkpoint: copied, same outputs."""
    out = tmp_path / "again"
    rc = resnest_main(["--log-level", "WARNING", "export", "--arch", "ResNeSt_tiny", "--checkpoint",
                       str(tiny_export.server_dir), "--out", str(out), "--no-onnx"])
    assert rc == 0
    x = np.random.default_rng(2).standard_normal((2, 3, 64, 64)).astype(np.float32)
    assert_close(run_predictor(out / "serving_server", x), run_predictor(tiny_export.server_dir, x))
    assert not (out / "serving_server" / "inference.onnx").exists()  # --no-onnx


def test_resize_short_and_crop_size_options(tmp_path):
    rc = resnest_main(["--log-level", "WARNING", "export", "--arch", "ResNeSt_tiny", "--random-init", "--out",
                       str(tmp_path / "b"), "--crop-size", "96", "--resize-short", "110", "--no-onnx"])
    assert rc == 0
    meta = json.loads((tmp_path / "b" / "serving_server" / "resnest_meta.json").read_text())
    assert (meta["crop_size"], meta["resize_short"]) == (96, 110)
    feed = read_config(tmp_path / "b" / "serving_server").feed_var[0]
    assert list(feed.shape) == [3, 96, 96]


def test_serving_dir_without_meta_serves_with_feed_shape_defaults(tiny_export, tmp_path, image_paths):
    """A serving_server made by Paddle Serving's own convert has no resnest_meta.json: sizes come from the
    feed shape (crop 64 → resize 64, PaddleClas's rule for sizes other than 224/256)."""
    import shutil

    from resnest_serving.pipeline.local import LocalClassifier

    foreign = tmp_path / "serving_server"
    shutil.copytree(tiny_export.server_dir, foreign)
    (foreign / "resnest_meta.json").unlink()
    local = LocalClassifier(foreign, engine="paddle")
    assert (local.bundle.meta.crop_size, local.bundle.meta.resize_short, local.bundle.labels) == (64, 64, None)
    predictions = local.classify_files(image_paths, k=2)
    assert len(predictions) == len(image_paths) and all(len(p.class_ids) == 2 for p in predictions)
