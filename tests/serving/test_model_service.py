"""GeneralModelService (C++ Serving's model-server API) in-process over bRPC and HTTP, and the remote
engine that calls it: messages, names, data encodings, errors through the RPC meta, gzip, batching."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import requests

from resnest_serving.pipeline.engines import start_engines
from resnest_serving.pipeline.local import LocalClassifier
from resnest_serving.protocol import baidu_std as bs
from resnest_serving.protocol import general_model_service_pb2 as gm
from resnest_serving.protocol.brpc_client import BrpcClient, SyncBrpcClient
from resnest_serving.protocol.bundle import ModelBundle
from resnest_serving.protocol.engine_options import EngineOptions
from resnest_serving.protocol.general_model import encode_request
from resnest_serving.serving.config.loader import ConfigError, load_config
from resnest_serving.serving.doors.brpc_server import BrpcServer
from resnest_serving.serving.doors.connections import DoorSettings
from resnest_serving.serving.split.model_server import run_model_server, serve_model
from resnest_serving.serving.split.model_service import ModelService, register_model_service, start_model_http
from resnest_serving.serving.split.remote_engine import RemoteModelError, create_remote_engines
from support import write_config

HOST = "127.0.0.1"
GM = "baidu.paddle_serving.predictor.general_model.GeneralModelService"
FAILED = "InferService inference failed!"
ALIAS = "image"  # the tiny bundle's feed alias equals its name ("x"); give it another one to tell them apart


class RecordingEngine:
    """A real engine that remembers the batch sizes it was given."""

    def __init__(self, engine):
        self.engine = engine
        self.batches: list[int] = []

    async def start(self):
        return await self.engine.start()

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch.shape[0])
        return await self.engine.infer(batch)

    async def close(self) -> None:
        await self.engine.close()


class LoopThread:
    """An event loop in a daemon thread, for servers the synchronous tests call."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


LIMITS = {"batch_size": 1, "auto_batching_timeout_ms": -1, "max_queue_images": 1024, "max_images_per_request": 32}


async def _start(bundle: ModelBundle, engines: list, **kwargs) -> SimpleNamespace:
    brpc = BrpcServer()
    service = register_model_service(brpc, bundle, engines, **{**LIMITS, **kwargs})
    await service.start()
    await brpc.start(HOST, 0)
    runner, http_port = await start_model_http(service, HOST, 0, DoorSettings(1 << 24))
    return SimpleNamespace(brpc=brpc, service=service, runner=runner, port=brpc.port, http_port=http_port)


async def _stop(s: SimpleNamespace) -> None:
    await s.brpc.stop(0.5)
    await s.runner.cleanup()
    await s.service.stop()


@pytest.fixture(scope="module")
def bundle(tiny_model_dir) -> ModelBundle:
    return replace(ModelBundle.load(tiny_model_dir), feed_alias=ALIAS)


@pytest.fixture(scope="module")
def local(tiny_model_dir) -> LocalClassifier:
    return LocalClassifier(tiny_model_dir)


@pytest.fixture(scope="module")
def servers(bundle) -> Iterator[SimpleNamespace]:
    """Two in-process model servers (the second for round-robin), one recording engine each."""
    loop = LoopThread()
    engines = [RecordingEngine(loop.run(start_engines(bundle, "onnxruntime", EngineOptions(thread_num=1), 1, 8))[0])
               for _ in range(2)]
    started = [loop.run(_start(bundle, [engine], batch_size=8, auto_batching_timeout_ms=30,
                               max_images_per_request=8)) for engine in engines]
    for s, engine in zip(started, engines, strict=True):
        s.engine = engine
    yield SimpleNamespace(loop=loop, main=started[0], other=started[1])
    for s in started:
        loop.run(_stop(s))
    loop.close()


@pytest.fixture(scope="module")
def server(servers) -> SimpleNamespace:
    return servers.main


@pytest.fixture(scope="module")
def client(server) -> Iterator[SyncBrpcClient]:
    with SyncBrpcClient(HOST, server.port) as c:
        yield c


@pytest.fixture(scope="module")
def batch(local, image_paths) -> np.ndarray:
    return np.stack([local.preprocess_bytes(p.name, p.read_bytes()) for p in image_paths[:3]])


def close_enough(got: np.ndarray, want: np.ndarray) -> bool:
    return got.shape == want.shape and float(np.abs(got - want).max()) <= 1e-4 * float(np.abs(want).max())


def fp32_tensor(batch: np.ndarray, name: str = "x", alias: str = "", content: bool = False) -> gm.Tensor:
    t = gm.Tensor(name=name, alias_name=alias, elem_type=1, shape=list(batch.shape))
    if content:
        t.tensor_content = batch.astype("<f4").tobytes()
    else:
        t.float_data.extend(batch.ravel())
    return t


def call(client: SyncBrpcClient, request: gm.Request, method: str = "inference", log_id: int = 0) -> gm.Response:
    return client.call_message(GM, method, request, gm.Response, log_id=log_id)


def expect_error(client: SyncBrpcClient, request: gm.Request | bytes, code: int, *texts: str) -> str:
    with pytest.raises(bs.BrpcError) as err:
        if isinstance(request, bytes):
            client.call(GM, "inference", request)
        else:
            call(client, request)
    assert err.value.code == code, err.value
    for text in texts:
        assert text in err.value.text, err.value.text
    return err.value.text


def probs_of(response: gm.Response) -> np.ndarray:
    (output,) = response.outputs
    tensor = output.tensor[0]
    return np.array(tensor.float_data, dtype=np.float32).reshape(list(tensor.shape))


# -- bRPC: success paths ------------------------------------------------------------------------------------


def test_float_data_real_feed_name_matches_in_process_engine(client, batch, local):
    response = call(client, gm.Request(tensor=[fp32_tensor(batch)], fetch_var_names=["prediction"], log_id=42))
    assert response.log_id == 42 and response.err_no == 0 and not response.err_msg
    (output,) = response.outputs
    assert output.engine_name == "general_infer_0"
    (tensor,) = output.tensor
    assert (tensor.name, tensor.alias_name, tensor.elem_type) == ("fetch_name_0", "prediction", 1)
    assert list(tensor.shape) == [3, 10] and not tensor.tensor_content
    assert close_enough(probs_of(response), local.probabilities(batch))


@pytest.mark.parametrize("how", ["alias in name", "alias in alias_name", "tensor_content", "content by alias"])
def test_feed_by_alias_and_tensor_content(client, batch, local, how):
    tensor = {"alias in name": lambda: fp32_tensor(batch, name=ALIAS),
              "alias in alias_name": lambda: fp32_tensor(batch, name="", alias=ALIAS),
              "tensor_content": lambda: fp32_tensor(batch, content=True),
              "content by alias": lambda: fp32_tensor(batch, name="", alias=ALIAS, content=True)}[how]()
    response = call(client, gm.Request(tensor=[tensor]))
    assert close_enough(probs_of(response), local.probabilities(batch))


def test_fp16_and_uint8_tensor_content(client, batch, local):
    half = gm.Tensor(name="x", elem_type=5, shape=list(batch.shape), tensor_content=batch.astype("<f2").tobytes())
    got = probs_of(call(client, gm.Request(tensor=[half])))
    assert close_enough(got, local.probabilities(batch.astype(np.float16).astype(np.float32)))
    raw = np.random.default_rng(0).integers(0, 3, batch.shape, dtype=np.uint8)
    u8 = gm.Tensor(name="x", elem_type=7, shape=list(batch.shape), tensor_content=raw.tobytes())
    assert close_enough(probs_of(call(client, gm.Request(tensor=[u8]))),
                        local.probabilities(raw.astype(np.float32)))


def test_fetch_var_names_real_alias_empty_and_repeated(client, batch):
    want = probs_of(call(client, gm.Request(tensor=[fp32_tensor(batch)], fetch_var_names=["prediction"])))
    for fetch in ([], ["fetch_name_0"], ["prediction", "fetch_name_0"]):
        response = call(client, gm.Request(tensor=[fp32_tensor(batch)], fetch_var_names=fetch))
        tensors = response.outputs[0].tensor
        assert len(tensors) == max(1, len(fetch))
        for t in tensors:
            assert t.alias_name == "prediction" and np.allclose(np.array(t.float_data).reshape(3, 10), want)


def test_log_id_from_meta_debug_method_and_profile(client, batch):
    response = call(client, gm.Request(tensor=[fp32_tensor(batch[:1])], profile_server=True), "debug", log_id=77)
    assert response.log_id == 77 and response.profile_server
    times = list(response.profile_time)
    assert len(times) == 4 and times == sorted(times)
    assert list(response.outputs[0].tensor[0].shape) == [1, 10]


def test_gzip_response_meta_like_cpp_serving(server, batch):
    """The raw frame: compress_type 2 in RpcMeta and a gzip payload, as C++ Serving's handler sets."""
    async def main() -> bs.Frame:
        payload = gm.Request(tensor=[fp32_tensor(batch[:1])], log_id=9).SerializeToString()
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(bs.encode_request(GM, "inference", payload, correlation_id=5, log_id=9))
        parser = bs.FrameParser()
        frames: list[bs.Frame] = []
        while not frames:
            frames += parser.feed(await asyncio.wait_for(reader.read(65536), 10))
        writer.close()
        return frames[0]

    frame = asyncio.run(main())
    assert frame.meta.correlation_id == 5 and frame.meta.compress_type == bs.CompressType.GZIP
    assert frame.meta.response.error_code == 0
    response = gm.Response.FromString(gzip.decompress(frame.payload))
    assert response.log_id == 9 and list(response.outputs[0].tensor[0].shape) == [1, 10]


def test_concurrent_requests_share_engine_batches(server, batch, local):
    want = local.probabilities(batch)
    server.engine.batches.clear()

    async def main() -> list[np.ndarray]:
        async with BrpcClient(HOST, server.port, pool_size=2) as c:
            calls = [c.call_message(GM, "inference", gm.Request(tensor=[fp32_tensor(batch[i % 3:i % 3 + 1])]),
                                    gm.Response) for i in range(6)]
            return [probs_of(r) for r in await asyncio.gather(*calls)]

    for i, got in enumerate(asyncio.run(main())):
        assert close_enough(got, want[i % 3:i % 3 + 1]), i
    assert sum(server.engine.batches) == 6 and max(server.engine.batches) > 1, server.engine.batches


# -- bRPC: errors through the RPC meta, server keeps serving -------------------------------------------------


def test_input_errors_are_5100_with_a_reason_and_the_server_keeps_serving(client, batch):
    good = gm.Request(tensor=[fp32_tensor(batch[:1])])
    cases = [
        (gm.Request(tensor=[fp32_tensor(batch[0])]), "shape [3, 64, 64] does not match the model's [N, 3, 64, 64]"),
        (gm.Request(tensor=[fp32_tensor(batch[:, :, :32, :32])]), "shape [3, 3, 32, 32]"),
        (gm.Request(tensor=[fp32_tensor(batch, name="pixels")]),
         "unknown feed var 'pixels'; this model's feed var is 'x' (alias 'image')"),
        (gm.Request(), "the request has no tensor"),
        (gm.Request(tensor=[fp32_tensor(batch[:1]), fp32_tensor(batch[:1])]), "has 2 tensors"),
        (gm.Request(tensor=[fp32_tensor(batch[:1])], fetch_var_names=["softmax"]),
         "unknown fetch var 'softmax'; this model fetches 'prediction' (real name 'fetch_name_0')"),
        (gm.Request(tensor=[gm.Tensor(name="x", elem_type=1, shape=[2, 3, 64, 64], float_data=[0.5] * 10)]),
         "10 values for shape [2, 3, 64, 64], which needs 24576"),
        (gm.Request(tensor=[gm.Tensor(name="x", elem_type=1, shape=[1, 3, 64, 64], tensor_content=b"abc")]),
         "not a whole number of FP32 values"),
        (gm.Request(tensor=[gm.Tensor(name="x", elem_type=0, shape=[1, 3, 64, 64], int64_data=[1])]),
         "elem_type 0 (INT64) is not supported"),
        (gm.Request(tensor=[fp32_tensor(np.zeros((9, 3, 64, 64), np.float32))]),
         "batch of 9 images; this server takes at most 8"),
    ]
    for request, reason in cases:
        text = expect_error(client, request, -5100, reason)
        assert text.startswith(FAILED + " "), text
        assert probs_of(call(client, good)).shape == (1, 10)


def test_malformed_payload_is_erequest_and_unknown_method_enomethod(client, batch):
    expect_error(client, b"\xff\xff\xff\xff", bs.Errno.EREQUEST, "Fail to parse request message as "
                 "baidu.paddle_serving.predictor.general_model.Request")
    with pytest.raises(bs.BrpcError) as err:
        client.call(GM, "predict", b"")
    assert err.value.code == bs.Errno.ENOMETHOD
    assert probs_of(call(client, gm.Request(tensor=[fp32_tensor(batch[:1])]))).shape == (1, 10)


class _FailingEngine:
    """Stands in for an engine that fails on every batch (a GPU out of memory cannot be made here)."""

    async def infer(self, batch):
        raise RuntimeError("CUDA out of memory")

    async def close(self):
        pass


class _SlowEngine:
    """Stands in for an engine that takes 0.3 s per batch (to fill the queue and to die mid-call);
    `entered` is set once a batch is inside."""

    def __init__(self):
        self.entered = asyncio.Event()

    async def infer(self, batch):
        self.entered.set()
        await asyncio.sleep(0.3)
        return np.zeros((batch.shape[0], 10), np.float32)

    async def close(self):
        pass


def test_engine_failure_queue_full_and_internal_error(bundle, batch, monkeypatch):
    request = gm.Request(tensor=[fp32_tensor(batch[:1])])

    async def main() -> None:
        failing = ModelService(bundle, [_FailingEngine()], **LIMITS)
        with pytest.raises(bs.BrpcError) as err:
            await failing.infer(request)
        assert err.value.code == -5100 and "engine error: RuntimeError: CUDA out of memory" in err.value.text
        await failing.stop()

        slow = ModelService(bundle, [_SlowEngine()], **{**LIMITS, "max_queue_images": 1})
        await slow.start()
        results = await asyncio.gather(*(slow.infer(request) for _ in range(3)), return_exceptions=True)
        codes = [r.code for r in results if isinstance(r, bs.BrpcError)]
        assert bs.Errno.ELIMIT in codes and any(isinstance(r, gm.Response) for r in results)
        monkeypatch.setattr(slow, "_response", lambda *a: 1 / 0)
        with pytest.raises(bs.BrpcError) as err:
            await slow.infer(request)
        assert err.value.code == -5000 and "Framework Internal Error. ZeroDivisionError" in err.value.text
        await slow.stop()

    asyncio.run(main())


# -- HTTP ----------------------------------------------------------------------------------------------------


def http(server, body, path="/GeneralModelService/inference", **headers) -> requests.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(f"http://{HOST}:{server.http_port}{path}", data=data, headers=headers, timeout=30)


def test_http_json_like_httpclient(server, batch, local):
    """paddle_serving_client HttpClient's JSON shape; brpc pb2json answers (numbers, defaults left out)."""
    body = {"tensor": [{"float_data": batch.ravel().tolist(), "elem_type": 1, "name": "x", "alias_name": ALIAS,
                        "shape": list(batch.shape)}], "fetch_var_names": ["prediction"], "log_id": 12}
    r = http(server, body, **{"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.headers.get("Content-Encoding") == "gzip"  # requests asks for gzip; body >= 512 bytes
    data = r.json()
    assert data["log_id"] == 12 and "err_no" not in data and "profile_time" not in data
    (output,) = data["outputs"]
    assert output["engine_name"] == "general_infer_0"
    tensor = output["tensor"][0]
    assert tensor["name"] == "fetch_name_0" and tensor["alias_name"] == "prediction" and tensor["shape"] == [3, 10]
    assert close_enough(np.array(tensor["float_data"], np.float32).reshape(3, 10), local.probabilities(batch))


def test_http_json_base64_tensor_content_and_gzip_request(server, batch, local):
    content = base64.b64encode(batch[:1].astype("<f4").tobytes()).decode()
    body = json.dumps({"tensor": [{"tensor_content": content, "elem_type": 1, "name": "x", "shape": [1, 3, 64, 64]}],
                       "unknown_key": 1}).encode()  # unknown keys are ignored, as json2pb does
    r = http(server, gzip.compress(body), **{"Content-Encoding": "gzip", "Accept-Encoding": "identity"})
    assert r.status_code == 200, r.text
    assert "Content-Encoding" not in r.headers
    probs = np.array(r.json()["outputs"][0]["tensor"][0]["float_data"], np.float32).reshape(1, 10)
    assert close_enough(probs, local.probabilities(batch[:1]))


def test_http_application_proto(server, batch, local):
    request = gm.Request(tensor=[fp32_tensor(batch, content=True)], log_id=3)
    r = http(server, request.SerializeToString(), **{"Content-Type": "application/proto"})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/proto")
    response = gm.Response.FromString(r.content)
    assert response.log_id == 3 and close_enough(probs_of(response), local.probabilities(batch))


@pytest.mark.parametrize("path, body, headers, status, code, text", [
    ("/GeneralModelService/inference", "{not json", {}, 400, 1003,
     "Fail to parse http body as baidu.paddle_serving.predictor.general_model.Request"),
    ("/GeneralModelService/inference", b"\xff\xff", {"Content-Type": "application/proto"}, 400, 1003,
     "Fail to parse http body"),
    ("/GeneralModelService/inference", {"tensor": [{"name": "x", "elem_type": 1, "shape": [3, 64, 64],
                                                    "float_data": [0.0]}]}, {}, 500, -5100,
     FAILED + " feed var 'x': shape [3, 64, 64]"),
    ("/GeneralModelService/inference", {"tensor": [{"name": "y", "shape": [1, 3, 64, 64]}]}, {}, 500, -5100,
     "unknown feed var 'y'"),
    ("/GeneralModelService/inference", {"fetch_var_names": ["nope"]}, {}, 500, -5100, "no tensor"),
    ("/OtherService/inference", {}, {}, 404, 1001, "Fail to find service"),
    ("/GeneralModelService/predict", {}, {}, 404, 1002, "Fail to find method"),
])
def test_http_errors_brpc_style(server, path, body, headers, status, code, text):
    r = http(server, body, path, **headers)
    assert r.status_code == status, r.text
    assert r.headers["x-bd-error-code"] == str(code)
    assert r.headers["Content-Type"].startswith("text/plain")
    assert text in r.text


def test_http_full_service_name_path(server, batch):
    body = {"tensor": [{"float_data": batch[:1].ravel().tolist(), "elem_type": 1, "name": "x",
                        "shape": [1, 3, 64, 64]}]}
    r = http(server, body, f"/{GM}/inference")
    assert r.status_code == 200 and r.json()["outputs"][0]["tensor"][0]["shape"] == [1, 10]


# -- the remote engine against these servers -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def test_encode_request_parses_like_protobuf(batch):
    for content in (False, True):
        data = encode_request(batch, "x", ALIAS, ["prediction"], log_id=7, use_tensor_content=content)
        want = gm.Request(tensor=[fp32_tensor(batch, alias=ALIAS, content=content)], fetch_var_names=["prediction"],
                          log_id=7)
        assert gm.Request.FromString(data) == want


def test_remote_engine_round_robin_and_equal_answers(servers, bundle, batch, local):
    want = local.probabilities(batch)
    for s in (servers.main, servers.other):
        s.engine.batches.clear()
    engines = create_remote_engines(bundle, (f"{HOST}:{servers.main.port}", f"{HOST}:{servers.other.port}"),
                                    2, 10.0)

    async def main() -> list[np.ndarray]:
        assert [(await e.start()).kind for e in engines] == ["brpc", "brpc"]
        out = [await engines[i % 2].infer(batch) for i in range(4)]
        await engines[0].close()
        return out

    for got in asyncio.run(main()):
        assert close_enough(got, want)
    assert sum(servers.main.engine.batches) == 6 and sum(servers.other.engine.batches) == 6


def test_remote_engine_skips_dead_endpoints_and_names_them(server, bundle, batch, caplog):
    dead = f"{HOST}:{free_port()}"
    engines = create_remote_engines(bundle, (dead, f"{HOST}:{server.port}"), 1, 10.0, backoff_s=30)

    async def main() -> None:
        for _ in range(3):  # the dead one first, then skipped during its back-off
            assert (await engines[0].infer(batch[:1])).shape == (1, 10)
        await engines[0].close()

    asyncio.run(main())
    assert sum(f"model server {dead} unreachable" in r.getMessage() for r in caplog.records) == 1

    only_dead = create_remote_engines(bundle, (dead,), 1, 10.0, backoff_s=30)

    async def all_dead() -> tuple[RemoteModelError, RemoteModelError]:
        errors = []
        for _ in range(2):
            with pytest.raises(RemoteModelError) as err:
                await only_dead[0].infer(batch[:1])
            errors.append(err.value)
        return errors[0], errors[1]

    caplog.clear()
    first, second = asyncio.run(all_dead())
    assert "no model server available" in str(first) and "1 endpoint(s): EFAILEDSOCKET" in str(first)
    assert "1 endpoint(s): down" in str(second)
    assert dead not in str(first) + str(second)  # the caller is not told internal addresses: the log is
    assert any(f"{dead}: [EFAILEDSOCKET 1009]" in r.getMessage() for r in caplog.records)
    assert any(f"{dead}: down for" in r.getMessage() for r in caplog.records)


def test_remote_engine_retries_a_call_whose_server_died_mid_call(server, bundle, batch, caplog):
    """The connection drops while the call is in flight (EEOF): the same batch goes to the next endpoint."""
    async def main() -> np.ndarray:
        slow = _SlowEngine()
        dying = await _start(bundle, [slow])
        engine = create_remote_engines(bundle, (f"{HOST}:{dying.port}", f"{HOST}:{server.port}"), 1, 10.0)[0]
        call = asyncio.create_task(engine.infer(batch[:1]))
        await asyncio.wait_for(slow.entered.wait(), 10)  # in the slow engine now
        await dying.brpc.stop(0)  # cancels the call, closes the connection
        try:
            return await asyncio.wait_for(call, 10)
        finally:
            await engine.close()
            await _stop(dying)

    got = asyncio.run(main())
    assert got.shape == (1, 10) and got.sum() > 0.99  # from the live server, not the zeros of the slow one
    assert any("unreachable" in r.getMessage() and "EEOF 1014" in r.getMessage() for r in caplog.records)


def test_remote_engine_surfaces_model_server_errors(server, bundle, batch, caplog):
    wrong = replace(bundle, feed_name="input", feed_alias="input")  # a pipeline bundle that is not the served one
    engine = create_remote_engines(wrong, (f"{HOST}:{server.port}",), 1, 10.0)[0]
    with pytest.raises(RemoteModelError) as err:
        asyncio.run(engine.infer(batch[:1]))
    assert err.value.code == -5100 and err.value.endpoint == f"{HOST}:{server.port}"
    assert "model server failed (model call log_id=" in str(err.value)
    assert "unknown feed var 'input'" in str(err.value) and str(server.port) not in str(err.value)
    assert any(f"model server {HOST}:{server.port} failed" in r.getMessage() for r in caplog.records)


# -- model server config checks ------------------------------------------------------------------------------


def test_model_server_refuses_configs_it_cannot_serve(tmp_path, tiny_model_dir):
    no_brpc = load_config(write_config(tmp_path / "a.yml", tiny_model_dir, top={"brpc_port": None}))
    with pytest.raises(ConfigError, match=r"brpc_port: not set; a model server serves GeneralModelService"):
        asyncio.run(serve_model(no_brpc))
    remote = load_config(write_config(tmp_path / "b.yml", tiny_model_dir, op={"local_service_conf": {
        "model_config": str(tiny_model_dir), "client_type": "brpc", "server_endpoints": ["127.0.0.1:9393"]}}))
    with pytest.raises(ConfigError, match=r"client_type: got 'brpc'; a model server runs the model itself"):
        run_model_server(remote)
    workers = load_config(write_config(tmp_path / "c.yml", tiny_model_dir, top={"worker_num": 2, "brpc_port": 9393,
                                                                                "rpc_port": None, "http_port": None}))
    with pytest.raises(ConfigError, match=r"worker_num: got 2"):
        run_model_server(workers)


def test_remote_security_from_config(servers, bundle, batch, tmp_path):
    """Issue #24.7: the remote engine's TLS keys, mutual TLS included, against an mTLS bRPC front (a proxy to
    the plain model server); the key rules are refused by name."""
    from resnest_serving.protocol.wire import GENERAL_MODEL_SERVICE
    from resnest_serving.serving.config.schema import LocalServiceConf, TlsConfig
    from resnest_serving.serving.doors.security import server_ssl_context
    from resnest_serving.serving.split.remote_engine import RemoteSecurity
    from support import make_tls_files

    files = make_tls_files(tmp_path / "tls")
    base = LocalServiceConf(model_config=tmp_path)
    bad = [({"rpc_tls_cert_file": files["client_cert"]}, "give rpc_tls_cert_file and rpc_tls_key_file together"),
           ({"rpc_tls_cert_file": files["client_cert"], "rpc_tls_key_file": files["client_key"]},
            "a client certificate needs rpc_tls_ca_file"),
           ({"rpc_token_file": tmp_path / "missing"}, "lsc.rpc_token_file: .* is not a file")]
    for keys, text in bad:
        with pytest.raises(ValueError, match=text):
            RemoteSecurity.from_config(replace(base, **keys), "lsc")
    mutual = RemoteSecurity.from_config(replace(base, rpc_tls_ca_file=files["ca"], rpc_tls_cert_file=files[
        "client_cert"], rpc_tls_key_file=files["client_key"]))
    ca_only = RemoteSecurity.from_config(replace(base, rpc_tls_ca_file=files["ca"]))

    async def start_proxy() -> tuple[BrpcServer, BrpcClient]:
        upstream = BrpcClient(HOST, servers.main.port)

        async def forward(payload: bytes, ctx) -> bytes:
            return await upstream.call(GENERAL_MODEL_SERVICE, "inference", payload, log_id=ctx.log_id)

        tls = TlsConfig(cert_file=files["server_cert"], key_file=files["server_key"], client_ca_file=files["ca"])
        proxy = BrpcServer(ssl_context=server_ssl_context(tls))
        proxy.register(GENERAL_MODEL_SERVICE, "inference", forward)
        await proxy.start(HOST, 0)
        return proxy, upstream

    proxy, upstream = servers.loop.run(start_proxy())
    try:
        endpoint = (f"{HOST}:{proxy.port}",)
        engine = create_remote_engines(bundle, endpoint, 1, 10.0, security=mutual)[0]
        got = asyncio.run(engine.infer(batch[:1]))
        assert got.shape == (1, 10) and got.sum() > 0.99
        without_cert = create_remote_engines(bundle, endpoint, 1, 10.0, security=ca_only)[0]
        with pytest.raises(RemoteModelError, match="no model server available"):
            asyncio.run(without_cert.infer(batch[:1]))
    finally:
        servers.loop.run(proxy.stop(0.5))
        servers.loop.run(upstream.close())
