"""Split deployment as real processes on loopback: `resnest serve` with `client_type: brpc` does decoding
and top-k, model servers (serving.model_server) run the model; same answers as in-process, round-robin
over two model servers, and a model server killed and restarted under a running pipeline."""

from __future__ import annotations

import ast
import base64
import json
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from support import REPO_ROOT, ServerProcess, make_tls_files

from pipeline.local import LocalClassifier
from protocol import general_model_service_pb2 as gm
from protocol import pipeline_service_pb2 as pb
from protocol import pipeline_service_pb2_grpc as pb_grpc
from protocol.brpc_client import SyncBrpcClient

HOST = "127.0.0.1"
GM = "baidu.paddle_serving.predictor.general_model.GeneralModelService"
PIPELINE_YML = REPO_ROOT / "configs" / "split_pipeline.yml"
MODEL_SERVER_YML = REPO_ROOT / "configs" / "split_model_server.yml"
class ModelServerProcess(ServerProcess):
    """`resnest serve --model-server` as a subprocess. `wait=False` returns at once (start several in
    parallel, then `wait_ready()`)."""

    def __init__(self, config_path: Path, overrides: dict, wait: bool = True):
        super().__init__(config_path, overrides, extra_args=["--model-server"], wait=wait)

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.ports['brpc']}"

    def served(self) -> int:
        """Inference calls answered so far (its DEBUG log has one line per call)."""
        return sum("GeneralModelService.inference from" in line and " ok in " in line for line in self.lines)


def start_model_server(model_dir: Path, brpc_port: int = 0, wait: bool = True,
                       extra: dict | None = None) -> ModelServerProcess:
    """configs/split_model_server.yml on free ports (or brpc_port), serving model_dir, one math thread."""
    lsc = "op.imagenet.local_service_conf"
    return ModelServerProcess(MODEL_SERVER_YML, {
        "brpc_port": brpc_port, "http_port": 0, "log_level": "DEBUG", "shutdown_grace_s": 2,
        f"{lsc}.model_config": str(model_dir), f"{lsc}.thread_num": 1, **(extra or {})}, wait=wait)


@pytest.fixture(scope="module")
def split(tiny_model_dir):
    """configs/split_*.yml: two model servers (started in parallel) and a pipeline that calls both."""
    models = [start_model_server(tiny_model_dir, wait=False) for _ in range(2)]
    for model in models:
        model.wait_ready()
    pipeline = ServerProcess(PIPELINE_YML, {
        "rpc_port": 0, "http_port": 0, "brpc_port": 0, "op.imagenet.topk": 3,
        "op.imagenet.server_endpoints": json.dumps([m.endpoint for m in models]),
        "op.imagenet.local_service_conf.rpc_timeout_ms": 5000,
        "op.imagenet.local_service_conf.model_config": str(tiny_model_dir)})
    state = {"models": models, "pipeline": pipeline}
    yield state
    for proc in [state["pipeline"], *state["models"]]:
        proc.stop()


@pytest.fixture(scope="module")
def local(tiny_model_dir) -> LocalClassifier:
    return LocalClassifier(tiny_model_dir)


def predict(pipeline: ServerProcess, images: list[bytes], logid: int = 1) -> pb.Response:
    values = [base64.b64encode(data).decode() for data in images]
    request = pb.Request(key=[f"image_{i}" for i in range(len(values))], value=values, name="imagenet",
                         method="prediction", logid=logid)
    with grpc.insecure_channel(f"{HOST}:{pipeline.ports['grpc']}") as channel:
        return pb_grpc.PipelineServiceStub(channel).inference(request, timeout=30)


def test_pipeline_over_model_servers_answers_like_in_process(split, local, image_paths):
    images = [p.read_bytes() for p in image_paths]
    want = local.classify_bytes(images, k=3)
    answer = predict(split["pipeline"], images)
    assert answer.err_no == 0, answer.err_msg
    out = {k: ast.literal_eval(v) for k, v in zip(answer.key, answer.value, strict=True)}
    assert out["class_ids"] == [p.class_ids for p in want]
    got_prob, want_prob = np.array(out["scores"]), np.array([p.scores for p in want])
    assert np.abs(got_prob - want_prob).max() <= 1e-4 * want_prob.max()

    # the model server itself, called directly: probabilities equal the in-process engine's
    batch = np.stack([local.preprocess_bytes(p.name, p.read_bytes()) for p in image_paths])
    request = gm.Request(tensor=[gm.Tensor(name="x", elem_type=1, shape=list(batch.shape),
                                           float_data=batch.ravel())], fetch_var_names=["prediction"], log_id=5)
    with SyncBrpcClient(HOST, split["models"][0].ports["brpc"]) as client:
        response = client.call_message(GM, "inference", request, gm.Response)
    tensor = response.outputs[0].tensor[0]
    got, want_probs = np.array(tensor.float_data).reshape(list(tensor.shape)), local.probabilities(batch)
    assert response.log_id == 5 and np.abs(got - want_probs).max() <= 1e-4 * np.abs(want_probs).max()


def test_two_model_servers_take_turns(split, image_paths):
    models = split["models"]
    time.sleep(0.3)  # the previous test's last DEBUG lines may still be on their way
    before = [m.served() for m in models]
    image = image_paths[0].read_bytes()
    for i in range(6):
        assert predict(split["pipeline"], [image], logid=100 + i).err_no == 0
    deadline = time.monotonic() + 10  # each DEBUG line is written just after its answer
    while sum(m.served() for m in models) - sum(before) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    served = [m.served() - b for m, b in zip(models, before, strict=True)]
    assert sum(served) == 6 and min(served) >= 2, served


TOKEN = "model-server-token-0123456789"


def test_secured_split_deployment_tls_and_token(tmp_path, tiny_model_dir, image_paths):
    """Issue #24.7: a model server with tls: and auth:, a pipeline with the matching rpc_tls_ca_file and
    rpc_token_file answers; a wrong token (the pipeline's token file rotated to one the model server does not
    know) gives err_no 10000 naming no internal address, and the right one works again without a restart."""
    files = make_tls_files(tmp_path / "tls")
    server_tokens, pipeline_token = tmp_path / "model_tokens.txt", tmp_path / "pipeline_token.txt"
    server_tokens.write_text(f"{TOKEN}\n")
    pipeline_token.write_text(f"{TOKEN}\n")
    for path in (server_tokens, pipeline_token):
        path.chmod(0o600)
    model = start_model_server(tiny_model_dir, extra={
        "tls.cert_file": str(files["server_cert"]), "tls.key_file": str(files["server_key"]),
        "auth.token_file": str(server_tokens)})
    lsc = "op.imagenet.local_service_conf"
    pipeline = None
    try:
        assert "security: TLS on brpc, http; tokens required" in model.log
        pipeline = ServerProcess(PIPELINE_YML, {
            "rpc_port": 0, "http_port": 0, "op.imagenet.server_endpoints": json.dumps([model.endpoint]),
            f"{lsc}.rpc_timeout_ms": 5000, f"{lsc}.model_config": str(tiny_model_dir),
            f"{lsc}.rpc_tls_ca_file": str(files["ca"]), f"{lsc}.rpc_token_file": str(pipeline_token)})
        assert f"remote model at {model.endpoint} over bRPC (TLS, token from {pipeline_token})" in pipeline.log
        image = image_paths[0].read_bytes()
        answer = predict(pipeline, [image], logid=11)
        assert answer.err_no == 0, answer.err_msg

        pipeline_token.write_text("not-the-model-servers-token-0123\n")
        time.sleep(1.1)  # the token file is looked at once a second
        answer = predict(pipeline, [image], logid=12)
        assert answer.err_no == 10000, answer
        assert "model server failed" in answer.err_msg and "ERPCAUTH" in answer.err_msg
        assert "Log_id: 12" in answer.err_msg and str(model.ports["brpc"]) not in answer.err_msg
        assert f"model server {model.endpoint} failed" in pipeline.log  # the address is in the log

        pipeline_token.write_text(f"{TOKEN}\n")
        time.sleep(1.1)
        answer = predict(pipeline, [image], logid=13)
        assert answer.err_no == 0, answer.err_msg
    finally:
        for proc in (pipeline, model):
            if proc is not None:
                proc.stop()


def test_model_server_killed_then_restarted_under_a_running_pipeline(split, tiny_model_dir, image_paths):
    """Runs last: kills the module's model servers."""
    pipeline, (first, second) = split["pipeline"], split["models"]
    image = image_paths[0].read_bytes()

    second.stop(signal.SIGKILL)  # one down: the other one answers every request
    for i in range(4):
        answer = predict(pipeline, [image], logid=200 + i)
        assert answer.err_no == 0, answer.err_msg

    port = first.ports["brpc"]
    first.stop(signal.SIGKILL)  # both down: clear errors; the endpoints are named in the log, not to the caller
    for i in range(3):
        answer = predict(pipeline, [image], logid=300 + i)
        assert answer.err_no == 10000, answer
        assert "no model server available" in answer.err_msg and f"Log_id: {300 + i}" in answer.err_msg
        assert str(first.ports["brpc"]) not in answer.err_msg and str(second.ports["brpc"]) not in answer.err_msg
    assert f"{first.endpoint}: " in pipeline.log and f"{second.endpoint}: " in pipeline.log

    restarted = start_model_server(tiny_model_dir, brpc_port=port)
    split["models"][0] = restarted
    assert restarted.ports["brpc"] == port
    deadline = time.monotonic() + 15
    while (answer := predict(pipeline, [image], logid=400)).err_no != 0:  # within the 1 s back-off
        assert time.monotonic() < deadline, answer.err_msg
        time.sleep(0.2)
    assert pipeline.proc.poll() is None  # the same pipeline process throughout
    for i in range(3):
        assert predict(pipeline, [image], logid=500 + i).err_no == 0
    assert restarted.stop() == 0 and "stopped" in restarted.log  # SIGTERM: graceful, exit 0
