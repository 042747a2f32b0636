"""How to run a bundle's model: the engine switches, in Paddle Serving's `local_service_conf` vocabulary.

Plain data (no Paddle import), so the exporter, the pipeline, the server and a client-only install share it.
The defaults equal the config schema's (`serving/config_schema.py` `LocalServiceConf`); a test compares them.
"""

from __future__ import annotations

from dataclasses import dataclass

CPU, GPU, TENSORRT = 0, 1, 2  # Paddle Serving's device_type codes (the ones this server runs)
DEVICE_CODES = {"cpu": CPU, "gpu": GPU, "tensorrt": TENSORRT}


@dataclass(frozen=True)
class EngineOptions:
    """Engine switches; `device_type` is the resolved Paddle Serving code (never -1, "from devices")."""

    device_type: int = CPU  # CPU, GPU or TENSORRT
    gpu_id: int = 0
    thread_num: int = 2  # math threads per engine instance (Paddle Serving's default)
    use_mkldnn: bool = True  # oneDNN: several times faster on CPU
    mkldnn_cache_capacity: int = 0  # 0 = Paddle's own default (10 input shapes)
    mkldnn_op_list: tuple[str, ...] | None = None  # restrict oneDNN to these ops
    mkldnn_bf16_op_list: tuple[str, ...] | None = None  # ops run in bf16 with precision bf16
    ir_optim: bool = True
    mem_optim: bool = True  # applied on GPU only
    precision: str = "fp32"  # fp32 | fp16 | int8 | bf16
    min_subgraph_size: int = 3
    use_calib: bool = False
    gpu_mem_mb: int = 500
    max_batch_size: int = 32  # TensorRT engine's max batch (the server sets op.batch_size)
    batch_streams: int = 1  # OpenVINO: parallel streams a batch of 2+ images is split over; 1 = no split

    @property
    def on_gpu(self) -> bool:
        """GPU, with or without TensorRT."""
        return self.device_type in (GPU, TENSORRT)
