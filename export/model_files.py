"""Paddle inference model files on disk, and the one place that builds a `paddle.inference.Config`.

Three layouts load: Paddle 3 (`*.json` + `*.pdiparams`, what we export), legacy (`*.pdmodel` +
`*.pdiparams`, as in PaddleClas's released `*_infer.tar`), and the old `__model__` + `__params__`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")  # Paddle's C++ INFO lines are noise in a server log


@dataclass(frozen=True)
class EngineOptions:
    """Paddle Inference switches, in Paddle Serving's `local_service_conf` vocabulary."""

    device_type: int = 0  # 0 CPU, 1 GPU, 2 GPU + TensorRT (Paddle Serving codes)
    gpu_id: int = 0
    thread_num: int = 1  # CPU math threads for this predictor
    use_mkldnn: bool = True  # oneDNN: several times faster on CPU
    mkldnn_cache_capacity: int = 0
    mkldnn_op_list: tuple[str, ...] | None = None  # restrict oneDNN to these ops
    mkldnn_bf16_op_list: tuple[str, ...] | None = None  # ops run in bf16 with precision bf16
    ir_optim: bool = True
    mem_optim: bool = True
    precision: str = "fp32"  # fp32 | fp16 | int8 | bf16
    min_subgraph_size: int = 3
    use_calib: bool = False
    gpu_mem_mb: int = 500
    max_batch_size: int = 32  # TensorRT engine's max batch


def find_model_files(directory: Path) -> tuple[Path, Path]:
    """(model file, params file) of the inference model in `directory`, or a FileNotFoundError saying why."""
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    if (directory / "__model__").is_file() and (directory / "__params__").is_file():
        return directory / "__model__", directory / "__params__"
    params = sorted(directory.glob("*.pdiparams"))
    for suffix in (".json", ".pdmodel"):
        for model in sorted(directory.glob(f"*{suffix}")):
            twin = model.with_suffix(".pdiparams")
            if twin.is_file():
                return model, twin
    found = sorted(p.name for p in directory.iterdir())
    hint = "no .pdiparams file" if not params else "no .json or .pdmodel file next to the .pdiparams"
    raise FileNotFoundError(f"{directory}: no Paddle inference model ({hint}); found {found[:10]}")


def config_calls(options: EngineOptions) -> list[tuple[str, tuple]]:
    """The `paddle.inference.Config` method calls that Paddle Serving's options ask for, in order.

    Kept as data so that the GPU (device_type 1) and TensorRT (2) paths, which cannot run on a machine
    without a GPU, are checked by configuration tests; they are unverified on hardware."""
    from paddle import inference

    precision = options.precision.lower()
    calls: list[tuple[str, tuple]] = [("disable_glog_info", ())]
    if options.device_type in (1, 2):
        modes = {"fp32": inference.PrecisionType.Float32, "fp16": inference.PrecisionType.Half,
                 "int8": inference.PrecisionType.Int8, "bf16": inference.PrecisionType.Bfloat16}
        if precision not in modes:
            raise ValueError(f"precision {options.precision!r} is not one of {', '.join(modes)}")
        if options.device_type == 1:  # int8 needs TensorRT; plain GPU runs it as fp32
            gpu_mode = modes["fp32"] if precision == "int8" else modes[precision]
            calls.append(("enable_use_gpu", (options.gpu_mem_mb, options.gpu_id, gpu_mode)))
        else:
            calls.append(("enable_use_gpu", (options.gpu_mem_mb, options.gpu_id)))
            calls.append(("enable_tensorrt_engine", (1 << 30, options.max_batch_size, options.min_subgraph_size,
                                                     modes[precision], False, options.use_calib)))
        if options.mem_optim:
            calls.append(("enable_memory_optim", ()))
    else:
        calls.append(("disable_gpu", ()))
        calls.append(("set_cpu_math_library_num_threads", (options.thread_num,)))
        if options.use_mkldnn:
            calls.append(("enable_mkldnn", ()))
            if options.mkldnn_cache_capacity > 0:
                calls.append(("set_mkldnn_cache_capacity", (options.mkldnn_cache_capacity,)))
            if options.mkldnn_op_list:
                calls.append(("set_mkldnn_op", (set(options.mkldnn_op_list),)))
            if precision == "bf16":
                calls.append(("enable_mkldnn_bfloat16", ()))
                if options.mkldnn_bf16_op_list:
                    calls.append(("set_bfloat16_op", (set(options.mkldnn_bf16_op_list),)))
        else:
            calls.append(("disable_mkldnn", ()))
        # mem_optim is not applied on CPU: Paddle 3.3.1's PIR predictor fails at creation with
        # memory_optimize_pass ("Not find predictor_id N and pass_name memory_optimize_pass").
    calls.append(("switch_ir_optim", (options.ir_optim,)))
    return calls


def paddle_config(model_file: Path, params_file: Path, options: EngineOptions):
    """A paddle.inference.Config with the switches of `config_calls(options)` applied."""
    import paddle
    from paddle import inference

    if options.device_type in (1, 2) and not paddle.is_compiled_with_cuda():
        raise ValueError(f"device_type {options.device_type} needs a GPU build of Paddle (paddlepaddle-gpu); "
                         "the installed paddlepaddle is CPU-only")
    config = inference.Config(str(model_file), str(params_file))
    for method, args in config_calls(options):
        getattr(config, method)(*args)
    return config


def open_predictor(model_file: Path, params_file: Path, options: EngineOptions | None = None):
    """A ready Paddle predictor (CPU, oneDNN, 1 thread unless options say otherwise)."""
    from paddle import inference

    return inference.create_predictor(paddle_config(model_file, params_file, options or EngineOptions()))
