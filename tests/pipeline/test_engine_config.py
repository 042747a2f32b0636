"""Engine switches: oneDNN/threads on CPU run here; GPU and TensorRT paths cannot run without a GPU, so
these tests check that the right paddle.inference.Config switches are set (unverified on hardware)."""

from __future__ import annotations

import pytest

from resnest_serving.pipeline.engines.paddle_config import config_calls, paddle_config
from resnest_serving.protocol.bundle import ModelBundle
from resnest_serving.protocol.engine_options import EngineOptions


def config_for(model_dir, **options):
    bundle = ModelBundle.load(model_dir)
    return paddle_config(bundle.model_file, bundle.params_file, EngineOptions(**options))


def test_cpu_switches(tiny_model_dir):
    config = config_for(tiny_model_dir, thread_num=2)
    assert not config.use_gpu() and config.mkldnn_enabled() and config.ir_optim()
    assert config.cpu_math_library_num_threads() == 2
    config = config_for(tiny_model_dir, use_mkldnn=False, ir_optim=False)
    assert not config.mkldnn_enabled() and not config.ir_optim()


def test_onednn_op_lists():
    calls = dict(config_calls(EngineOptions(precision="bf16", mkldnn_op_list=("conv2d",),
                                            mkldnn_bf16_op_list=("conv2d", "pool2d"))))
    assert calls["set_mkldnn_op"] == ({"conv2d"},) and calls["set_bfloat16_op"] == ({"conv2d", "pool2d"},)
    assert "enable_mkldnn_bfloat16" in calls


def test_gpu_switches():
    from paddle import inference

    calls = dict(config_calls(EngineOptions(device_type=1, gpu_id=1, gpu_mem_mb=800)))
    assert calls["enable_use_gpu"] == (800, 1, inference.PrecisionType.Float32)
    assert "enable_tensorrt_engine" not in calls and "disable_gpu" not in calls
    assert "enable_memory_optim" in calls
    fp16 = dict(config_calls(EngineOptions(device_type=1, precision="FP16")))
    assert fp16["enable_use_gpu"][2] == inference.PrecisionType.Half


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_switches(precision):
    from paddle import inference

    calls = dict(config_calls(EngineOptions(device_type=2, precision=precision, min_subgraph_size=5,
                                            max_batch_size=16, use_calib=True)))
    want = {"fp32": inference.PrecisionType.Float32, "fp16": inference.PrecisionType.Half,
            "int8": inference.PrecisionType.Int8}[precision]
    workspace, max_batch, min_subgraph, mode, use_static, use_calib = calls["enable_tensorrt_engine"]
    assert (max_batch, min_subgraph, mode, use_static, use_calib) == (16, 5, want, False, True)
    assert "enable_use_gpu" in calls


def test_gpu_on_cpu_build_is_a_clear_error(tiny_model_dir):
    import paddle

    if paddle.is_compiled_with_cuda():
        pytest.skip("GPU build of Paddle")
    with pytest.raises(ValueError, match="needs a GPU build of Paddle"):
        config_for(tiny_model_dir, device_type=1)
