"""The bundle contract in protocol/: loadable without the server's or the exporter's packages, and engine
defaults that are the config schema's."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

from resnest_serving.protocol.engine_options import DEVICE_CODES, EngineOptions
from resnest_serving.serving.config.schema import LocalServiceConf

# EngineOptions fields that are not config keys of the same name, and where their value comes from.
NOT_SCHEMA_KEYS = {
    "device_type": "resolved code: the schema's -1 ('from devices') is resolved before it gets here",
    "gpu_id": "one id of local_service_conf.devices, per engine instance",
    "gpu_mem_mb": "not configurable in Paddle Serving's local_service_conf",
    "max_batch_size": "op.batch_size",
}


def test_engine_defaults_are_the_schema_defaults() -> None:
    """Every EngineOptions field that is a local_service_conf key has the schema's default; the others are
    listed with their source, so a new field must be placed on one side or the other."""
    schema = {f.name: f.default for f in dataclasses.fields(LocalServiceConf)}
    ours = {f.name: f.default for f in dataclasses.fields(EngineOptions)}
    assert set(ours) - set(schema) <= set(NOT_SCHEMA_KEYS), set(ours) - set(schema) - set(NOT_SCHEMA_KEYS)
    shared = sorted(set(ours) & set(schema) - set(NOT_SCHEMA_KEYS))
    assert {"thread_num", "use_mkldnn", "ir_optim", "mem_optim", "precision", "min_subgraph_size"} <= set(shared)
    assert {name: ours[name] for name in shared} == {name: schema[name] for name in shared}


def test_device_codes_are_paddle_servings() -> None:
    assert DEVICE_CODES == {"cpu": 0, "gpu": 1, "tensorrt": 2}
    assert not EngineOptions().on_gpu and EngineOptions(device_type=DEVICE_CODES["tensorrt"]).on_gpu


def test_bundle_contract_loads_without_server_or_exporter_packages() -> None:
    """A client-only install has no Paddle, OpenCV, YAML or engines: the bundle modules must not need them."""
    code = ("import sys\n"
            "from resnest_serving.protocol import bundle, bundle_meta, engine_options, labels, serving_config\n"
            "heavy = ('paddle', 'cv2', 'yaml', 'onnxruntime', 'openvino', 'resnest_serving.export', "
            "'resnest_serving.pipeline', 'resnest_serving.serving')\n"
            "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
