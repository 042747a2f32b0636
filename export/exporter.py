"""Checkpoint (or existing inference model) → Paddle inference model + Paddle Serving model/client dirs.

Layout written under `out/` (the same as Paddle Serving's `convert`, plus our meta file):
    serving_server/  inference.json + inference.pdiparams (or the source's legacy .pdmodel),
                     serving_server_conf.prototxt (+ .stream.prototxt), resnest_meta.json,
                     [labels file], inference.onnx (unless --no-onnx), [inference.int8.onnx (--int8)]
    serving_client/  serving_client_conf.prototxt (+ .stream.prototxt)
Everything is built in a temporary sibling directory and renamed into place at the end, so a failed
export leaves nothing half-written.

int8 calibration and the bf16/int8 checks run the model through the server's preprocessing and engines,
which are `pipeline/`'s: the caller hands them in as a `BundleRunner` (`resnest_serving.export_command`
does), so this package never imports `pipeline/`.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from resnest_serving.export.checkpoint import SUPPORTED_SUFFIXES
from resnest_serving.export.resnest import ArchSpec, arch_spec, build_model
from resnest_serving.protocol.bundle import find_model_files
from resnest_serving.protocol.bundle_meta import BundleMeta, resize_short_for_crop
from resnest_serving.protocol.serving_config import VarSpec, build_config, write_config_files
from resnest_serving.protocol.wire import NUMPY_ELEM_TYPES, ElemType

log = logging.getLogger(__name__)

MODEL_PREFIX = "inference"


class ExportError(ValueError):
    """The export cannot proceed: bad arguments, unreadable source, or an existing output dir."""


@dataclass
class ExportOptions:
    """What `resnest export` was asked to do."""

    arch: str
    out: Path
    checkpoint: Path | None = None  # a checkpoint file, or an existing Paddle inference model dir
    random_init: bool = False  # random weights: for shapes and speed only
    seed: int = 0
    class_num: int | None = None
    feed_alias: str = "x"
    fetch_alias: str = "prediction"  # PaddleClas edits the fetch alias to this
    softmax: bool = True  # PaddleClas's export appends softmax
    label_file: Path | None = None
    onnx: bool = True  # inference.onnx for ONNX Runtime and OpenVINO
    int8: bool = False  # also inference.int8.onnx, calibrated on calibration_images
    calibration_images: dict[str, bytes] = field(default_factory=dict)  # name -> encoded image
    check_images: dict[str, dict[str, bytes]] = field(default_factory=dict)  # set name -> {name: encoded image}
    check_threads: int = 1  # math threads for the accuracy check
    force: bool = False
    resize_short: int | None = None
    crop_size: int | None = None


class BundleRunner(Protocol):
    """What int8 calibration and the precision checks need from the code that runs models (`pipeline/`)."""

    def preprocess(self, server_dir: Path, images: Mapping[str, bytes]) -> np.ndarray:
        """Encoded images by name → the bundle's [N, 3, H, W] float32 input, as the server preprocesses."""
        ...

    def check_precisions(self, server_dir: Path, image_sets: Mapping[str, Mapping[str, bytes]],
                         precisions: Sequence[str], thread_num: int) -> dict:
        """bf16/int8 against fp32 on every engine that runs them here: the meta's `precision_checks`."""
        ...


@dataclass
class ExportResult:
    out: Path
    server_dir: Path
    client_dir: Path
    meta: BundleMeta
    seconds: float
    notes: list[str] = field(default_factory=list)


def export(opts: ExportOptions, runner: BundleRunner | None = None) -> ExportResult:
    """Run the whole export into a temporary dir, then move it to `opts.out`. int8 and the precision checks
    (calibration or check images given) need a `runner`."""
    started = time.perf_counter()
    _check_options(opts, runner)
    out = opts.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        server_dir, client_dir = tmp / "serving_server", tmp / "serving_client"
        server_dir.mkdir(parents=True)
        meta = _write_bundle(opts, server_dir, client_dir, runner)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - started
    log.info("exported %s to %s in %.1f s", meta.arch or "model", out, seconds)
    return ExportResult(out, out / "serving_server", out / "serving_client", meta, seconds)


def _check_options(opts: ExportOptions, runner: BundleRunner | None) -> None:
    arch_spec(opts.arch)  # raises for an unknown variant
    if opts.random_init == (opts.checkpoint is not None):
        raise ExportError("give exactly one of --checkpoint PATH or --random-init")
    if opts.checkpoint is not None:
        path = opts.checkpoint
        if not path.exists():
            raise ExportError(f"checkpoint {path} does not exist")
        if path.is_file() and not path.name.lower().endswith(SUPPORTED_SUFFIXES):
            raise ExportError(f"checkpoint {path}: unsupported file type {path.suffix!r}; "
                              f"expected one of {', '.join(SUPPORTED_SUFFIXES)} or an inference model dir")
    if opts.label_file is not None and not opts.label_file.is_file():
        raise ExportError(f"label file {opts.label_file} does not exist")
    if opts.out.exists() and not opts.force:
        raise ExportError(f"output {opts.out} exists; pass --force to replace it")
    if not opts.feed_alias or not opts.fetch_alias:
        raise ExportError("feed and fetch aliases must be non-empty")
    if opts.int8 and not opts.onnx:
        raise ExportError("--int8 quantizes the ONNX model: it cannot be combined with --no-onnx")
    if opts.int8 and not opts.calibration_images:
        raise ExportError("--int8 needs calibration images (--calib-images DIR): a few dozen like the served ones")
    if (opts.calibration_images or opts.check_images) and runner is None:
        raise ExportError("int8 calibration and precision checks run the model: give a BundleRunner "
                          "(resnest_serving.export_command.export_model does)")


def _write_bundle(opts: ExportOptions, server_dir: Path, client_dir: Path, runner: BundleRunner | None) -> BundleMeta:
    source: dict = {}
    if opts.checkpoint is not None and opts.checkpoint.is_dir():
        spec = _spec(opts, arch_spec(opts.arch))
        model_file, params_file = _copy_inference_model(opts.checkpoint, server_dir)
        source = {"inference_model": str(opts.checkpoint.resolve())}
    else:
        model, source = _load_dygraph(opts)
        spec = _spec(opts, model.spec)
        model_file, params_file = _save_inference_model(model, spec, opts.softmax, server_dir)
    feeds, fetches = _io_specs(model_file, params_file, spec, opts)
    write_config_files(build_config(feeds, fetches), server_dir, client_dir)

    label_name = ""
    if opts.label_file is not None:
        label_name = opts.label_file.name
        shutil.copyfile(opts.label_file, server_dir / label_name)
    onnx_name = ""
    if opts.onnx:
        onnx_name = _export_onnx(model_file, params_file, server_dir, spec.crop_size)
    meta = BundleMeta(arch=opts.arch, resize_short=spec.resize_short, crop_size=spec.crop_size,
                      class_num=fetches[0].shape[-1], softmax=opts.softmax, label_file=label_name,
                      onnx_file=onnx_name, source=source)
    meta.write(server_dir)
    if runner is not None and opts.int8:
        meta = _quantize(opts, server_dir, meta, runner)
    if runner is not None and (opts.check_images or opts.calibration_images):
        meta = _check_precisions(opts, server_dir, meta, runner)
    else:
        log.info("no accuracy check of bf16/int8 recorded: give --check-images DIR to record one")
    return meta


def _quantize(opts: ExportOptions, server_dir: Path, meta: BundleMeta, runner: BundleRunner) -> BundleMeta:
    from resnest_serving.export.quantize import INT8_ONNX, quantize_int8

    calibration = runner.preprocess(server_dir, opts.calibration_images)
    quantize_int8(server_dir / meta.onnx_file, server_dir / INT8_ONNX, calibration)
    meta = replace(meta, int8_onnx_file=INT8_ONNX)
    meta.write(server_dir)
    return meta


def _check_precisions(opts: ExportOptions, server_dir: Path, meta: BundleMeta, runner: BundleRunner) -> BundleMeta:
    """bf16 and int8 against fp32 on every engine that runs them here, recorded in the meta file."""
    sets = dict(opts.check_images) or {"calibration": opts.calibration_images}
    precisions = ("bf16", "int8") if meta.int8_onnx_file else ("bf16",)
    checks = runner.check_precisions(server_dir, sets, precisions, opts.check_threads)
    meta = replace(meta, precision_checks=checks)
    meta.write(server_dir)
    return meta


def _spec(opts: ExportOptions, spec: ArchSpec) -> ArchSpec:

    crop = opts.crop_size or spec.crop_size
    resize = opts.resize_short or (resize_short_for_crop(crop) if opts.crop_size else spec.resize_short)
    if resize < crop:
        raise ExportError(f"resize_short {resize} is smaller than crop_size {crop}")
    return replace(spec, crop_size=crop, resize_short=resize)


def _load_dygraph(opts: ExportOptions):
    import paddle

    if opts.random_init:
        paddle.seed(opts.seed)
        overrides = {"class_num": opts.class_num} if opts.class_num else {}
        return build_model(opts.arch, **overrides), {"random_init": True, "seed": opts.seed}
    from resnest_serving.export.checkpoint import load_checkpoint_model

    model, info = load_checkpoint_model(opts.arch, opts.checkpoint, class_num=opts.class_num)
    return model, {"checkpoint": str(opts.checkpoint.resolve()), **info.to_dict()}


def _save_inference_model(model, spec: ArchSpec, softmax: bool, server_dir: Path) -> tuple[Path, Path]:
    import paddle

    class ExportModel(paddle.nn.Layer):
        """The classifier with PaddleClas's export head: softmax appended unless disabled."""

        def __init__(self, net, with_softmax: bool):
            super().__init__()
            self.net = net
            self.softmax = paddle.nn.Softmax(axis=-1) if with_softmax else None

        def forward(self, x):
            y = self.net(x)
            return self.softmax(y) if self.softmax is not None else y

    if spec.crop_size % 32 == 0:  # every shortcut pool sees even maps: ceil == floor, and floor is faster
        for layer in model.sublayers():
            if isinstance(layer, paddle.nn.AvgPool2D) and layer.ceil_mode and layer.ksize == layer.stride:
                layer.ceil_mode = False
    wrapped = ExportModel(model, softmax)
    wrapped.eval()
    input_spec = [paddle.static.InputSpec([None, 3, spec.crop_size, spec.crop_size], "float32", name="x")]
    paddle.jit.save(wrapped, str(server_dir / MODEL_PREFIX), input_spec=input_spec)
    return find_model_files(server_dir)


def _check_model_file(model_file: Path) -> None:
    """Refuse a model file Paddle cannot parse before Paddle loads it: a damaged .pdmodel crashes the whole
    process (SIGSEGV) instead of raising."""
    import json

    what = f"{model_file} is not a Paddle inference model"
    if model_file.suffix == ".json":
        try:
            json.loads(model_file.read_bytes())
        except ValueError as exc:
            raise ExportError(f"{what} (not JSON: {exc})") from None
        return
    from google.protobuf.message import DecodeError
    from paddle.base.proto import framework_pb2

    try:
        program = framework_pb2.ProgramDesc.FromString(model_file.read_bytes())
    except DecodeError as exc:
        raise ExportError(f"{what} ({exc}); give the .pdmodel + .pdiparams of PaddleClas's *_infer.tar") from None
    ops = {op.type for block in program.blocks for op in block.ops}
    if not {"feed", "fetch"} <= ops:
        raise ExportError(f"{what} (no feed/fetch ops: damaged, or not saved for inference)")


def _copy_inference_model(src: Path, server_dir: Path) -> tuple[Path, Path]:
    model_file, params_file = find_model_files(src)
    _check_model_file(model_file)
    for path in (model_file, params_file):
        shutil.copyfile(path, server_dir / path.name)
    return server_dir / model_file.name, server_dir / params_file.name


def _io_specs(model_file: Path, params_file: Path, spec: ArchSpec,
              opts: ExportOptions) -> tuple[list[VarSpec], list[VarSpec]]:
    """Feed/fetch names and shapes, read from the saved model by running it once on zeros."""
    predictor = _probe_predictor(model_file, params_file)
    in_names, out_names = predictor.get_input_names(), predictor.get_output_names()
    if len(in_names) != 1 or len(out_names) != 1:
        raise ExportError(f"expected a classifier with one input and one output, got inputs {in_names} "
                          f"and outputs {out_names}")
    handle = predictor.get_input_handle(in_names[0])
    x = np.zeros((1, 3, spec.crop_size, spec.crop_size), np.float32)
    handle.reshape(list(x.shape))
    handle.copy_from_cpu(x)
    predictor.run()
    out = predictor.get_output_handle(out_names[0]).copy_to_cpu()
    if out.ndim != 2:
        raise ExportError(f"model output {out_names[0]} has shape {list(out.shape)}; expected [N, classes]")
    feed = VarSpec(in_names[0], opts.feed_alias, ElemType.FP32, (3, spec.crop_size, spec.crop_size))
    fetch = VarSpec(out_names[0], opts.fetch_alias, NUMPY_ELEM_TYPES[str(out.dtype)], (out.shape[1],))
    return [feed], [fetch]


def _probe_predictor(model_file: Path, params_file: Path):
    """A one-thread CPU Paddle predictor, only to run the saved model once. The engines' Config (every
    `local_service_conf` switch, GPU, TensorRT) is `pipeline/engines/paddle_config.py`'s; this package runs
    no engines, so it builds this small one itself."""
    from paddle import inference

    config = inference.Config(str(model_file), str(params_file))
    config.disable_glog_info()
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(1)
    config.enable_mkldnn()
    return inference.create_predictor(config)


def _export_onnx(model_file: Path, params_file: Path, server_dir: Path, size: int) -> str:
    """Convert with paddle2onnx in a child process (its converter aborts the process on unsupported ops),
    then make reshape targets computed from the runtime shape constant (`export.onnx_shapes`)."""
    import importlib.util
    import subprocess
    import sys

    from resnest_serving.export.onnx_shapes import fold_file

    if importlib.util.find_spec("paddle2onnx") is None:
        raise ExportError("--onnx needs paddle2onnx: pip install 'resnest-serving[export]'")
    name = f"{MODEL_PREFIX}.onnx"
    code = ("import sys, paddle2onnx; paddle2onnx.export(sys.argv[1], sys.argv[2], save_file=sys.argv[3], "
            "opset_version=17, enable_onnx_checker=True)")
    proc = subprocess.run([sys.executable, "-c", code, str(model_file), str(params_file), str(server_dir / name)],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not (server_dir / name).is_file():
        errors = [line for line in proc.stderr.splitlines() + proc.stdout.splitlines() if "ERROR" in line]
        raise ExportError(f"paddle2onnx failed (exit {proc.returncode}): {' | '.join(errors[:3]) or proc.stderr[-500:]}")
    fold_file(server_dir / name, size, size)
    return name
