"""Open Inference Protocol (KServe V2) clients without tritonclient: REST with the binary tensor extension
(``POST /v2/models/{name}/infer``) and gRPC (``inference.GRPCInferenceService/ModelInfer`` with raw
contents), sync and asyncio. They speak to this server or any V2 server serving an image classifier
that takes encoded images as a BYTES input and supports the classification extension.

``classify`` sends the images as BYTES [N, 1] and asks for the top ``topk`` classes per image; the
answers are ``Classification`` objects as from the Paddle Serving protocols (scores at full precision).
``probabilities`` returns the FP32 [N, classes] output. ``infer`` (the pipeline-Request API the other
clients share) is answered in Paddle Serving's shape, built from the classification.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any
from urllib.parse import quote

import numpy as np

from resnest_serving.client.base import AsyncClassifier, Classifier
from resnest_serving.client.codec import Classification
from resnest_serving.client.errors import BadResponseError, TransportError
from resnest_serving.client.grpc_client import AsyncGrpcClassifier, GrpcClassifier, _transport_error
from resnest_serving.client.http_client import AsyncHttpClassifier, HttpClassifier
from resnest_serving.client.images import image_bytes, named_images
from resnest_serving.protocol import grpc_predict_v2_pb2 as pb
from resnest_serving.protocol import grpc_predict_v2_pb2_grpc as pb_grpc
from resnest_serving.protocol.endpoints import join_host_port
from resnest_serving.protocol.pipeline_service_pb2 import Request, Response
from resnest_serving.protocol.v2 import (
    HEADER_LENGTH,
    IMAGE_INPUT,
    REPOSITORY_FIELDS,
    BytesFramingError,
    decode_bytes,
    encode_bytes,
    repository_path,
)

__all__ = ["CLASSES", "DEFAULT_TOPK", "AsyncV2GrpcClassifier", "AsyncV2HttpClassifier", "V2GrpcClassifier",
           "V2HttpClassifier", "parse_classification"]

DEFAULT_TOPK = 5
OUTPUT = "prediction"
INDEX, LOAD, UNLOAD = "index", "load", "unload"  # the model repository extension's calls
JSON_HEADERS = {"Content-Type": "application/json"}
GRPC_REPOSITORY = {INDEX: ("RepositoryIndex", pb.RepositoryIndexRequest),
                   LOAD: ("RepositoryModelLoad", pb.RepositoryModelLoadRequest),
                   UNLOAD: ("RepositoryModelUnload", pb.RepositoryModelUnloadRequest)}


def split_bytes_tensor(blob: bytes, shape: list[int] | None = None) -> list[bytes]:
    """The elements of a raw BYTES output; BadResponseError when its length prefixes do not add up to the
    buffer (one cut short, one past the end) or, given the output's `shape`, it holds another count."""
    try:
        items = decode_bytes(blob)
    except BytesFramingError as exc:
        raise BadResponseError(f"malformed BYTES output: {exc}") from None
    if shape is not None and len(items) != math.prod(shape):
        raise BadResponseError(f"malformed BYTES output: shape {shape} needs {math.prod(shape)} elements, the "
                               f"data holds {len(items)}")
    return items


def parse_classification(items: list[bytes | str], rows: int) -> list[Classification]:
    """The classification extension's "score:index[:label]" strings, row-major [rows, k]."""
    if rows == 0 or len(items) % rows:
        raise BadResponseError(f"{len(items)} classification strings for {rows} images")
    k = len(items) // rows
    out = []
    for r in range(rows):
        ids, scores, labels = [], [], []
        for item in items[r * k:(r + 1) * k]:
            text = item.decode("utf-8", "replace") if isinstance(item, bytes) else item
            parts = text.split(":", 2)
            try:
                scores.append(float(parts[0]))
                ids.append(int(parts[1]))
            except (ValueError, IndexError):
                raise BadResponseError(f"classification string {text!r} is not score:index[:label]") from None
            labels.append(parts[2] if len(parts) > 2 else parts[1])
        out.append(Classification(labels[0].replace(",", ""), scores[0], tuple(labels), tuple(scores), tuple(ids)))
    return out


def pipeline_response(results: list[Classification]) -> Response:
    """Paddle Serving's response keys for ``results`` (what ``parse_classifications`` reads back)."""
    values = {"label": str([r.label for r in results]), "prob": str([r.prob for r in results]),
              "class_ids": str([list(r.class_ids) for r in results]),
              "scores": str([list(r.scores) for r in results]),
              "label_names": str([list(r.labels) for r in results])}
    return Response(err_no=0, key=list(values), value=list(values.values()))


def request_images(request: Request) -> list[bytes]:
    """The encoded images of a pipeline Request (its base64 values)."""
    return [base64.b64decode(value) for value in request.value]


def _images(images: Any, channel_order: str) -> list[bytes]:
    return [image_bytes(image, channel_order=channel_order) for _, image in named_images(images)]


class _V2Calls:
    """The client calls of both blocking V2 clients, over each protocol's `_call(images, k, timeout)` and
    `_repository(action, name, timeout)`. The repository calls are named as tritonclient's."""

    topk = DEFAULT_TOPK

    def repository_index(self, *, timeout: float | None = None) -> list[dict[str, str]]:
        """The server's model repository: one {"name", "version", "state", "reason"} per model (version)."""
        return self._repository(INDEX, "", timeout)

    def load_model(self, model_name: str, *, timeout: float | None = None) -> None:
        """Load `model_name` again, or pick up its new versions; TransportError when the server refuses."""
        self._repository(LOAD, model_name, timeout)

    def unload_model(self, model_name: str, *, timeout: float | None = None) -> None:
        """Stop serving `model_name` (requests in flight finish); TransportError when the server refuses."""
        self._repository(UNLOAD, model_name, timeout)

    def classify_request(self, request: Request, *, timeout: float | None = None) -> list[Classification]:
        return self._call(request_images(request), self.topk, timeout)

    def infer(self, request: Request, *, timeout: float | None = None) -> Response:
        return pipeline_response(self.classify_request(request, timeout=timeout))

    def probabilities(self, images: Any, *, timeout: float | None = None, channel_order: str = "bgr") -> np.ndarray:
        """FP32 [N, classes] model output for the images."""
        return self._call(_images(images, channel_order), 0, timeout)


class _AsyncV2Calls:
    """The client calls of both asyncio V2 clients, over each protocol's `_call(images, k, timeout)` and
    `_repository(action, name, timeout)`."""

    topk = DEFAULT_TOPK

    async def repository_index(self, *, timeout: float | None = None) -> list[dict[str, str]]:
        return await self._repository(INDEX, "", timeout)

    async def load_model(self, model_name: str, *, timeout: float | None = None) -> None:
        await self._repository(LOAD, model_name, timeout)

    async def unload_model(self, model_name: str, *, timeout: float | None = None) -> None:
        await self._repository(UNLOAD, model_name, timeout)

    async def classify_request(self, request: Request, *, timeout: float | None = None) -> list[Classification]:
        return await self._call(request_images(request), self.topk, timeout)

    async def infer(self, request: Request, *, timeout: float | None = None) -> Response:
        return pipeline_response(await self.classify_request(request, timeout=timeout))

    async def probabilities(self, images: Any, *, timeout: float | None = None,
                            channel_order: str = "bgr") -> np.ndarray:
        return await self._call(_images(images, channel_order), 0, timeout)


class _V2Http:
    protocol = "v2-http"
    topk = DEFAULT_TOPK

    def _v2_setup(self, topk: int) -> None:
        self.topk = topk
        version = f"/versions/{quote(self.model_version, safe='')}" if self.model_version else ""
        self.path = f"/v2/models/{quote(self.service_name, safe='')}{version}/infer"
        self.url = f"{self.credentials.scheme}://{join_host_port(self.host, self.port)}{self.path}"

    def _body(self, images: list[bytes], k: int) -> tuple[bytes, dict[str, str]]:
        blob = encode_bytes(images)
        output: dict[str, Any] = {"name": OUTPUT, "parameters": {"binary_data": True}}
        if k:
            output["parameters"]["classification"] = k
        header = json.dumps({"inputs": [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [len(images), 1],
                                         "parameters": {"binary_data_size": len(blob)}}],
                             "outputs": [output]}).encode()
        return header + blob, {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"}

    def _raise_for(self, status: int, data: bytes, url: str) -> None:
        """TransportError with the V2 `{"error"}` message of a non-200 answer."""
        if status == 200:
            return
        try:
            message = json.loads(data)["error"]
        except (ValueError, KeyError, TypeError):
            message = data[:300].decode("utf-8", "replace")
        raise TransportError(f"HTTP {status} from {url}: {message}", protocol=self.protocol, code=status,
                             timeout=status == 504)

    def _repository_answer(self, action: str, status: int, data: bytes, path: str) -> Any:
        """None for load/unload, the index entries for index; TransportError for an error answer."""
        url = f"{self.credentials.scheme}://{join_host_port(self.host, self.port)}{path}"
        self._raise_for(status, data, url)
        if action != INDEX:
            return None
        try:
            return [{key: str(entry.get(key, "")) for key in REPOSITORY_FIELDS} for entry in json.loads(data)]
        except (ValueError, TypeError, AttributeError) as exc:
            raise BadResponseError(f"HTTP 200 from {url} is not a V2 repository index: {exc}") from None

    def _answer(self, status: int, data: bytes, headers: Any, rows: int, k: int) -> Any:
        self._raise_for(status, data, self.url)
        try:
            n = int(headers.get(HEADER_LENGTH, len(data)))
            meta = json.loads(data[:n])
            out = meta["outputs"][0]
            blob = data[n:]
            if k:
                items = split_bytes_tensor(blob, out["shape"]) if blob else out["data"]
                return parse_classification(items, rows)
            return np.frombuffer(blob, "<f4").reshape(out["shape"]) if blob else np.asarray(
                out["data"], np.float32).reshape(out["shape"])
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise BadResponseError(f"HTTP 200 from {self.url} is not a V2 inference response: {exc}") from None


class V2HttpClassifier(_V2Calls, _V2Http, HttpClassifier):
    """Blocking Open Inference Protocol REST client (keep-alive pool, binary tensors)."""

    def __init__(self, endpoint: str, *, topk: int = DEFAULT_TOPK, model_version: str = "", **kwargs: Any) -> None:
        super().__init__(endpoint, **kwargs)
        self.model_version = model_version
        self._v2_setup(topk)

    def _call(self, images: list[bytes], k: int, timeout: float | None) -> Any:
        body, headers = self._body(images, k)
        status, data, reply_headers = self._post(body, headers, self._timeout(timeout))
        return self._answer(status, data, reply_headers, len(images), k)

    def _repository(self, action: str, name: str, timeout: float | None) -> Any:
        path = repository_path(action, name)
        status, data, _ = self._post(b"{}", JSON_HEADERS, self._timeout(timeout), path)
        return self._repository_answer(action, status, data, path)


class AsyncV2HttpClassifier(_AsyncV2Calls, _V2Http, AsyncHttpClassifier):
    """asyncio Open Inference Protocol REST client (aiohttp)."""

    def __init__(self, endpoint: str, *, topk: int = DEFAULT_TOPK, model_version: str = "", **kwargs: Any) -> None:
        super().__init__(endpoint, **kwargs)
        self.model_version = model_version
        self._v2_setup(topk)

    async def _call(self, images: list[bytes], k: int, timeout: float | None) -> Any:
        body, headers = self._body(images, k)
        status, data, reply_headers = await self._post(body, headers, self._timeout(timeout))
        return self._answer(status, data, reply_headers, len(images), k)

    async def _repository(self, action: str, name: str, timeout: float | None) -> Any:
        path = repository_path(action, name)
        status, data, _ = await self._post(b"{}", JSON_HEADERS, self._timeout(timeout), path)
        return self._repository_answer(action, status, data, path)


class _V2Grpc:
    protocol = "v2-grpc"
    topk = DEFAULT_TOPK

    def _message(self, images: list[bytes], k: int) -> pb.ModelInferRequest:
        output = pb.ModelInferRequest.InferRequestedOutputTensor(name=OUTPUT)
        if k:
            output.parameters["classification"].int64_param = k
        return pb.ModelInferRequest(
            model_name=self.service_name, model_version=self.model_version, outputs=[output], raw_input_contents=[encode_bytes(images)],
            inputs=[pb.ModelInferRequest.InferInputTensor(name=IMAGE_INPUT, datatype="BYTES",
                                                          shape=[len(images), 1])])

    def _answer(self, response: pb.ModelInferResponse, rows: int, k: int) -> Any:
        if not response.outputs or not response.raw_output_contents:
            raise BadResponseError("V2 gRPC response has no raw output")
        blob = response.raw_output_contents[0]
        if k:
            return parse_classification(split_bytes_tensor(blob, list(response.outputs[0].shape)), rows)
        return np.frombuffer(blob, "<f4").reshape(list(response.outputs[0].shape))

    @staticmethod
    def _repository_request(action: str, name: str) -> tuple[str, Any]:
        """The GRPCInferenceService method and request of a repository extension call."""
        method, message = GRPC_REPOSITORY[action]
        return method, message() if action == INDEX else message(model_name=name)

    @staticmethod
    def _repository_answer(action: str, response: Any) -> Any:
        if action != INDEX:
            return None
        return [{key: getattr(entry, key) for key in REPOSITORY_FIELDS} for entry in response.models]

    def _error(self, exc: Any) -> TransportError:
        error = _transport_error(exc, self.target)
        error.protocol = self.protocol
        return error


class V2GrpcClassifier(_V2Calls, _V2Grpc, GrpcClassifier):
    """Blocking Open Inference Protocol gRPC client."""

    def __init__(self, endpoint: str, *, topk: int = DEFAULT_TOPK, model_version: str = "", **kwargs: Any) -> None:
        super().__init__(endpoint, **kwargs)
        self.model_version = model_version
        self.topk = topk
        self._v2 = pb_grpc.GRPCInferenceServiceStub(self._channel)

    def _rpc(self, method: str, request: Any, timeout: float | None) -> Any:
        import grpc

        try:
            return getattr(self._v2, method)(request, timeout=self._timeout(timeout),
                                             metadata=self.credentials.grpc_metadata())
        except grpc.RpcError as exc:
            raise self.explained(self._error(exc)) from None

    def _call(self, images: list[bytes], k: int, timeout: float | None) -> Any:
        return self._answer(self._rpc("ModelInfer", self._message(images, k), timeout), len(images), k)

    def _repository(self, action: str, name: str, timeout: float | None) -> Any:
        method, request = self._repository_request(action, name)
        return self._repository_answer(action, self._rpc(method, request, timeout))


class AsyncV2GrpcClassifier(_AsyncV2Calls, _V2Grpc, AsyncGrpcClassifier):
    """asyncio Open Inference Protocol gRPC client (grpc.aio)."""

    def __init__(self, endpoint: str, *, topk: int = DEFAULT_TOPK, model_version: str = "", **kwargs: Any) -> None:
        super().__init__(endpoint, **kwargs)
        self.model_version = model_version
        self.topk = topk
        self._v2: pb_grpc.GRPCInferenceServiceStub | None = None

    async def _rpc(self, method: str, request: Any, timeout: float | None) -> Any:
        import grpc

        from resnest_serving.client.grpc_client import _CLASSIFIER_OPTIONS

        if self._channel is None:
            self._channel = self.credentials.grpc_channel(self.target, _CLASSIFIER_OPTIONS, aio=True)
        if self._v2 is None:
            self._v2 = pb_grpc.GRPCInferenceServiceStub(self._channel)
        try:
            return await getattr(self._v2, method)(request, timeout=self._timeout(timeout),
                                                   metadata=self.credentials.grpc_metadata())
        except grpc.RpcError as exc:
            raise self.explained(self._error(exc)) from None

    async def _call(self, images: list[bytes], k: int, timeout: float | None) -> Any:
        return self._answer(await self._rpc("ModelInfer", self._message(images, k), timeout), len(images), k)

    async def _repository(self, action: str, name: str, timeout: float | None) -> Any:
        method, request = self._repository_request(action, name)
        return self._repository_answer(action, await self._rpc(method, request, timeout))

    async def close(self) -> None:
        self._v2 = None
        await super().close()


CLASSES: dict[str, tuple[type[Classifier], type[AsyncClassifier]]] = {
    "v2-http": (V2HttpClassifier, AsyncV2HttpClassifier),
    "v2-grpc": (V2GrpcClassifier, AsyncV2GrpcClassifier),
}
