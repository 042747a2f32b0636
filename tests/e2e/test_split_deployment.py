"""Split deployment as real processes on loopback: `resnest serve` with `client_type: brpc` does decoding
and top-k, model servers (serving.split.model_server) run the model; same answers as in-process, round-robin
over two model servers, and a model server killed and restarted under a running pipeline."""

from __future__ import annotations

import ast
import base64
import itertools
import json
import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from resnest_serving.pipeline.local import LocalClassifier
from resnest_serving.protocol import general_model_service_pb2 as gm
from resnest_serving.protocol import pipeline_service_pb2 as pb
from resnest_serving.protocol import pipeline_service_pb2_grpc as pb_grpc
from resnest_serving.protocol.brpc_client import SyncBrpcClient
from support import REPO_ROOT, ServerProcess, make_tls_files, write_token_file

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


def until(call, done, timeout: float = 15.0):
    """`call()` every 0.3 s until `done(answer)` or the timeout; the last answer (the file is read about once a
    second, later on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = call()
        if done(answer) or time.monotonic() > deadline:
            return answer
        time.sleep(0.3)


def test_secured_split_deployment_tls_and_token(tmp_path, tiny_model_dir, image_paths):
    """Issue #24.7: a model server with tls: and auth:, a pipeline with the matching rpc_tls_ca_file and
    rpc_token_file answers; a wrong token (the pipeline's token file rotated to one the model server does not
    know) gives err_no 10000 naming no internal address, and the right one works again without a restart."""
    files = make_tls_files(tmp_path / "tls")
    server_tokens, pipeline_token = tmp_path / "model_tokens.txt", tmp_path / "pipeline_token.txt"
    for path in (server_tokens, pipeline_token):
        write_token_file(path, TOKEN)
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
        answer = until(lambda: predict(pipeline, [image], logid=12), lambda a: a.err_no != 0)  # read within ~1 s
        assert answer.err_no == 10000, answer
        assert "model server failed" in answer.err_msg and "ERPCAUTH" in answer.err_msg
        assert "Log_id: 12" in answer.err_msg and str(model.ports["brpc"]) not in answer.err_msg
        logged = until(lambda: pipeline.log, lambda text: f"model server {model.endpoint} failed" in text, 10.0)
        assert f"model server {model.endpoint} failed" in logged  # the address is in the log (written a moment later)

        pipeline_token.write_text(f"{TOKEN}\n")
        answer = until(lambda: predict(pipeline, [image], logid=13), lambda a: a.err_no == 0)
        assert answer.err_no == 0, answer.err_msg
    finally:
        for proc in (pipeline, model):
            if proc is not None:
                proc.stop()


class Load:
    """`threads` gRPC clients sending one-image requests to the pipeline back to back until `stop()`; every
    answer is kept as (sent, answered, err_no, err_msg), times from time.monotonic()."""

    def __init__(self, pipeline: ServerProcess, image: bytes, threads: int = 4):
        self.target = f"{HOST}:{pipeline.ports['grpc']}"
        self.value = base64.b64encode(image).decode()
        self.answers: list[tuple[float, float, int, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self, index: int) -> None:
        with grpc.insecure_channel(self.target) as channel:
            stub = pb_grpc.PipelineServiceStub(channel)
            for n in itertools.count():
                if self._stop.is_set():
                    return
                sent = time.monotonic()
                answer = stub.inference(pb.Request(key=["image"], value=[self.value], logid=10_000 * (index + 1) + n),
                                        timeout=30)
                self.answers.append((sent, time.monotonic(), answer.err_no, answer.err_msg))

    def wait_answers(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.answers) < count:
            assert time.monotonic() < deadline and all(t.is_alive() for t in self._threads), len(self.answers)
            time.sleep(0.01)

    def in_flight_at(self, moment: float) -> int:
        return sum(sent < moment < answered for sent, answered, _, _ in self.answers)

    def stop(self) -> list[tuple[float, float, int, str]]:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        return self.answers


def test_model_server_killed_then_restarted_under_a_running_pipeline(split, tiny_model_dir, image_paths):
    """Runs last: kills the module's model servers, each while 4 clients keep requests in flight."""
    pipeline, (first, second) = split["pipeline"], split["models"]
    image = image_paths[0].read_bytes()

    load = Load(pipeline, image)
    before = second.served()
    load.wait_answers(8)
    deadline = time.monotonic() + 10
    while second.served() == before:  # the load reaches the model server about to die
        assert time.monotonic() < deadline
        time.sleep(0.01)
    killed_at = time.monotonic()
    second.stop(signal.SIGKILL)  # one down: the other one answers every request, those in flight included
    load.wait_answers(len(load.answers) + 12)
    answers = load.stop()
    assert load.in_flight_at(killed_at) >= 2, "the kill did not happen under load"
    assert sum(sent > killed_at for sent, *_ in answers) >= 8
    assert all(err_no == 0 for _, _, err_no, _ in answers), [a for a in answers if a[2] != 0][:3]
    assert f"model server {second.endpoint} unreachable" in pipeline.log

    port = first.ports["brpc"]
    load = Load(pipeline, image)
    load.wait_answers(4)
    first.stop(signal.SIGKILL)  # both down: clear errors; the endpoints are named in the log, not to the caller
    down_from = len(load.answers)
    load.wait_answers(down_from + 8)
    failed = [a for a in load.answers[down_from + 4:] if a[2] != 0]
    assert failed, "no request failed with both model servers down"
    for _, _, err_no, err_msg in failed:
        assert err_no == 10000 and "no model server available" in err_msg and "Log_id: " in err_msg, err_msg
        assert str(first.ports["brpc"]) not in err_msg and str(second.ports["brpc"]) not in err_msg
    assert f"{first.endpoint}: " in pipeline.log and f"{second.endpoint}: " in pipeline.log

    restarted = start_model_server(tiny_model_dir, brpc_port=port)  # the load goes on meanwhile
    split["models"][0] = restarted
    assert restarted.ports["brpc"] == port
    back_at = time.monotonic()
    deadline = back_at + 15
    while not any(sent > back_at + 1.5 for sent, *_ in load.answers):  # past the 1 s back-off
        assert time.monotonic() < deadline
        time.sleep(0.05)
    load.wait_answers(len(load.answers) + 8)
    answers = load.stop()
    assert pipeline.proc.poll() is None  # the same pipeline process throughout
    late = [a for a in answers if a[0] > back_at + 1.5]
    assert len(late) >= 8 and all(err_no == 0 for _, _, err_no, _ in late), late[:3]
    assert restarted.stop() == 0 and "stopped" in restarted.log  # SIGTERM: graceful, exit 0
