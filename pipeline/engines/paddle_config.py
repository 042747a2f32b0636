"""The one place that turns `EngineOptions` into a `paddle.inference.Config` (and a predictor)."""

from __future__ import annotations

import os
from pathlib import Path

from resnest_serving.protocol.engine_options import TENSORRT, EngineOptions

os.environ.setdefault("GLOG_minloglevel", "2")  # Paddle's C++ INFO lines are noise in a server log


def config_calls(options: EngineOptions) -> list[tuple[str, tuple]]:
    """The `paddle.inference.Config` method calls that Paddle Serving's options ask for, in order.

    Kept as data so that the GPU (device_type 1) and TensorRT (2) paths, which cannot run on a machine
    without a GPU, are checked by configuration tests; they are unverified on hardware."""
    from paddle import inference

    precision = options.precision.lower()
    calls: list[tuple[str, tuple]] = [("disable_glog_info", ())]
    if options.on_gpu:
        modes = {"fp32": inference.PrecisionType.Float32, "fp16": inference.PrecisionType.Half,
                 "int8": inference.PrecisionType.Int8, "bf16": inference.PrecisionType.Bfloat16}
        if precision not in modes:
            raise ValueError(f"precision {options.precision!r} is not one of {', '.join(modes)}")
        if options.device_type != TENSORRT:  # int8 needs TensorRT; plain GPU runs it as fp32
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

    if options.on_gpu and not paddle.is_compiled_with_cuda():
        raise ValueError(f"device_type {options.device_type} needs a GPU build of Paddle (paddlepaddle-gpu); "
                         "the installed paddlepaddle is CPU-only")
    config = inference.Config(str(model_file), str(params_file))
    for method, args in config_calls(options):
        getattr(config, method)(*args)
    return config


def open_predictor(model_file: Path, params_file: Path, options: EngineOptions | None = None):
    """A ready Paddle predictor (`EngineOptions()` defaults unless options say otherwise)."""
    from paddle import inference

    return inference.create_predictor(paddle_config(model_file, params_file, options or EngineOptions()))
