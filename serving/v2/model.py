"""Open Inference Protocol (KServe V2 / Triton) mapping shared by the REST (serving/v2/rest_door.py) and gRPC
(serving/v2/grpc_door.py) front doors: the model's V2 view (metadata, Triton model config), tensor decoding,
V2 inputs → pipeline.Request → pipeline.Response → V2 outputs, and err_no → protocol errors.

The served model takes either input (exactly one per request):
  * `image`: BYTES [N] or [N, 1], one encoded image file (JPEG, PNG, ...) per row;
  * the model's feed alias (`x`): FP32 [N, 3, H, W], already preprocessed as the server would.
It answers the fetch alias (`prediction`): FP32 [N, classes] probabilities, or with the classification
extension (`parameters.classification: k` on that output) BYTES [N, k] of "score:index:label".
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import struct
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
from resnest_serving.pipeline.errors import ErrorCode
from resnest_serving.pipeline.postprocess import top_k
from resnest_serving.pipeline.types import Request
from resnest_serving.serving.core import ServingCore
from resnest_serving.serving.doors.http_guard import ascii_int

log = logging.getLogger(__name__)

MODEL_VERSION = "1"
SERVER_NAME = "resnest-serving"
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "model_repository(index)"]
BYTES_INPUT = "image"

NUMERIC_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
"""V2 datatype → little-endian numpy dtype (the binary tensor extension's byte layout)."""
DATATYPES = frozenset(NUMERIC_DTYPES) | {"BYTES", "BF16"}


class ErrorKind(Enum):
    """What went wrong, independent of the transport: (HTTP status, gRPC status name)."""

    INVALID = (400, "INVALID_ARGUMENT")
    NOT_FOUND = (404, "NOT_FOUND")
    METHOD = (405, "UNIMPLEMENTED")
    TOO_LARGE = (413, "RESOURCE_EXHAUSTED")
    UNAVAILABLE = (503, "UNAVAILABLE")
    INTERNAL = (500, "INTERNAL")


class V2Error(Exception):
    """A request the protocol answers with an error: HTTP status + {"error"}, or a gRPC status."""

    def __init__(self, kind: ErrorKind, message: str, err_no: int = int(ErrorCode.INPUT_PARAMS_ERROR)):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.err_no = err_no  # for the per-protocol request metrics
        self.counted = False  # True once the pipeline has counted it (an err_no answer)


def invalid(message: str) -> V2Error:
    return V2Error(ErrorKind.INVALID, message)


ERR_NO_KINDS = {ErrorCode.INPUT_PARAMS_ERROR: ErrorKind.INVALID, ErrorCode.NO_SERVICE: ErrorKind.NOT_FOUND,
                ErrorCode.TIMEOUT: ErrorKind.UNAVAILABLE, ErrorCode.CLOSED_ERROR: ErrorKind.UNAVAILABLE}


@dataclass
class Tensor:
    """A decoded input or an output: numeric data as an ndarray of `shape`, BYTES as a flat list."""

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray | list[bytes]
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestedOutput:
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)


MAX_REQUESTED_OUTPUTS = 16  # entries in a request's `outputs` (deduplicated to the model's one output)
MAX_RANK = 8
MAX_ELEMENTS = 2**31 - 1  # more than max_request_bytes can carry; numpy cannot reshape far beyond it


def check_shape(name: str, shape: Any) -> list[int]:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise invalid(f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}")
    if len(shape) > MAX_RANK or math.prod(d for d in shape if d) > MAX_ELEMENTS:
        raise invalid(f"input {name!r}: shape {shape} is beyond what any request can hold (at most {MAX_RANK} "
                      f"dimensions, {MAX_ELEMENTS} elements)")
    return shape


def check_datatype(name: str, datatype: Any) -> str:
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise invalid(f"input {name!r}: unknown datatype {datatype!r}; the protocol's are "
                      f"{', '.join(sorted(DATATYPES))}")
    return datatype


def decode_raw(name: str, datatype: str, shape: list[int], raw: bytes) -> np.ndarray | list[bytes]:
    """Raw tensor bytes (binary extension or gRPC raw_input_contents): little-endian elements, or for
    BYTES a 4-byte little-endian length before each element."""
    count = math.prod(shape)
    if datatype == "BYTES":
        items, offset = [], 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise invalid(f"input {name!r}: BYTES data ends inside an element's 4-byte length prefix")
            (size,) = struct.unpack_from("<I", raw, offset)
            offset += 4
            if offset + size > len(raw):
                raise invalid(f"input {name!r}: BYTES element {len(items)} claims {size} bytes but only "
                              f"{len(raw) - offset} remain")
            items.append(bytes(raw[offset:offset + size]))
            offset += size
        if len(items) != count:
            raise invalid(f"input {name!r}: shape {shape} needs {count} BYTES elements, the data holds {len(items)}")
        return items
    if datatype == "BF16":
        raise invalid(f"input {name!r}: BF16 is not accepted by this model; send FP32")
    dtype = NUMERIC_DTYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise invalid(f"input {name!r}: shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, "
                      f"got {len(raw)}")
    return np.frombuffer(raw, dtype).reshape(shape)


def decode_json(name: str, datatype: str, shape: list[int], data: Any, b64: bool) -> np.ndarray | list[bytes]:
    """JSON `data` (flat or nested, row-major). BYTES elements are strings (UTF-8 text, or base64 when the
    input or request has parameters.content_type "base64": JSON cannot carry raw image bytes)."""
    count = math.prod(shape)
    if datatype == "BYTES":
        flat = _flatten(name, data)
        if len(flat) != count:
            raise invalid(f"input {name!r}: shape {shape} needs {count} elements, data has {len(flat)}")
        out = []
        for i, item in enumerate(flat):
            if not isinstance(item, str):
                raise invalid(f"input {name!r}: BYTES element {i} must be a string, got {type(item).__name__}")
            out.append(_b64(name, i, item) if b64 else item.encode("utf-8", "surrogatepass"))
        return out
    if datatype == "BF16":
        raise invalid(f"input {name!r}: BF16 is not accepted by this model; send FP32")
    try:
        array = np.asarray(data, dtype=NUMERIC_DTYPES[datatype])
    except (ValueError, TypeError, OverflowError) as exc:
        raise invalid(f"input {name!r}: data is not a (nested) list of {datatype} numbers: {exc}") from None
    if array.size != count:
        raise invalid(f"input {name!r}: shape {shape} needs {count} elements, data has {array.size}")
    return array.reshape(shape)


def _flatten(name: str, data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise invalid(f"input {name!r}: data must be a list, got {type(data).__name__}")
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _b64(name: str, index: int, text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid(f"input {name!r}: element {index} is not valid base64 ({exc})") from None


def encode_raw(tensor: Tensor) -> bytes:
    """The binary form of an output (see decode_raw)."""
    if tensor.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(item)) + item for item in tensor.data)
    return np.ascontiguousarray(tensor.data, NUMERIC_DTYPES[tensor.datatype]).tobytes()


def logid_of(request_id: str) -> int:
    """The V2 request id as the pipeline's int64 logid when it is an ASCII number below 2**63, else 0 ("²"
    or a 5000-digit id included: never a ValueError)."""
    number = ascii_int(request_id, max_digits=19)
    return number if number is not None and number < 2**63 else 0


class V2Model:
    """The served pipeline as one V2 model: its metadata, config, and inference."""

    def __init__(self, core: ServingCore):
        self.core = core
        pipeline = core.pipeline
        bundle = pipeline.bundle
        self.name = pipeline.settings.service_name
        self.crop = bundle.meta.crop_size
        self.classes = bundle.meta.class_num
        self.tensor_input = bundle.feed_alias
        self.bytes_input = BYTES_INPUT if bundle.feed_alias != BYTES_INPUT else f"{BYTES_INPUT}_bytes"
        self.output = bundle.fetch_alias
        self.max_batch = pipeline.settings.max_images_per_request
        self.label_file = bundle.meta.label_file
        report = getattr(pipeline.batcher.engines[0], "report", None)
        self.platform = f"resnest_{report.kind}" if report else "resnest_remote"

    @property
    def ready(self) -> bool:
        return self.core.pipeline.ready

    def check(self, name: str, version: str = "", open_path: bool = False) -> None:
        """NOT_FOUND unless `name` (and `version`, if given) is this model. On an `open_path` (model
        readiness, answered without a token) the message names nothing this server serves."""
        if name != self.name:
            served = "" if open_path else f"; this server serves {self.name!r}"
            raise V2Error(ErrorKind.NOT_FOUND, f"unknown model {name[:200]!r}{served}", int(ErrorCode.NO_SERVICE))
        if version and version != MODEL_VERSION:
            has = "" if open_path else f"; it has version {MODEL_VERSION!r}"
            raise V2Error(ErrorKind.NOT_FOUND, f"model {name!r} has no version {version[:200]!r}{has}",
                          int(ErrorCode.NO_SERVICE))

    def server_metadata(self) -> dict[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            ours = version(SERVER_NAME)
        except PackageNotFoundError:
            ours = "unknown"
        return {"name": SERVER_NAME, "version": ours, "extensions": list(EXTENSIONS)}

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "versions": [MODEL_VERSION], "platform": self.platform,
                "inputs": [{"name": self.bytes_input, "datatype": "BYTES", "shape": [-1, 1]},
                           {"name": self.tensor_input, "datatype": "FP32", "shape": [-1, 3, self.crop, self.crop]}],
                "outputs": [{"name": self.output, "datatype": "FP32", "shape": [-1, self.classes]}]}

    def config(self) -> dict[str, Any]:
        """Triton's model configuration (JSON form; the gRPC ModelConfig is parsed from the same dict).
        Both inputs are optional: a request sends one of them."""
        output = {"name": self.output, "data_type": "TYPE_FP32", "dims": [self.classes]}
        if self.label_file:
            output["label_filename"] = self.label_file
        return {"name": self.name, "platform": self.platform, "backend": "resnest", "max_batch_size": self.max_batch,
                "input": [{"name": self.bytes_input, "data_type": "TYPE_STRING", "format": "FORMAT_NONE",
                           "dims": [1], "optional": True},
                          {"name": self.tensor_input, "data_type": "TYPE_FP32", "format": "FORMAT_NCHW",
                           "dims": [3, self.crop, self.crop], "optional": True}],
                "output": [output]}

    def repository_index(self) -> list[dict[str, str]]:
        return [{"name": self.name, "version": MODEL_VERSION, "state": "READY" if self.ready else "UNAVAILABLE"}]

    def reject(self, protocol: str, request_id: str, error: V2Error) -> None:
        """Log and count a request refused before it reached the pipeline."""
        log.info("logid=%d protocol=%s id=%r %s: %s", logid_of(request_id), protocol, request_id[:200],
                 error.kind.name, error.message)
        self.core.metrics.request_done(protocol, error.err_no, 0.0)

    def to_request(self, inputs: list[Tensor], request_id: str, protocol: str) -> Request:
        """The pipeline Request for decoded V2 inputs (exactly one of the two inputs)."""
        if len(inputs) != 1:
            names = [t.name for t in inputs]
            raise invalid(f"send exactly one input, {self.bytes_input!r} (BYTES [N, 1], encoded images) or "
                          f"{self.tensor_input!r} (FP32 [N, 3, {self.crop}, {self.crop}]); got {names}")
        tensor = inputs[0]
        logid = logid_of(request_id)
        if tensor.name == self.bytes_input:
            if tensor.datatype != "BYTES":
                raise invalid(f"input {tensor.name!r}: datatype {tensor.datatype} not accepted; send BYTES "
                              "(one encoded image file per row)")
            if not tensor.shape or any(d != 1 for d in tensor.shape[1:]):
                raise invalid(f"input {tensor.name!r}: shape {tensor.shape}; send [N] or [N, 1], one image per row")
            images = list(tensor.data)
            self._check_rows(tensor.name, len(images))
            keys = [f"{tensor.name}[{i}]" for i in range(len(images))]
            return Request(keys, [], logid=logid, name=self.name, protocol=protocol, images=images)
        if tensor.name == self.tensor_input:
            want = [3, self.crop, self.crop]
            if tensor.datatype != "FP32":
                raise invalid(f"input {tensor.name!r}: datatype {tensor.datatype} not accepted; send FP32 "
                              f"[N, 3, {self.crop}, {self.crop}]")
            if len(tensor.shape) != 4 or tensor.shape[1:] != want:
                raise invalid(f"input {tensor.name!r}: shape {tensor.shape}; this model takes "
                              f"[N, 3, {self.crop}, {self.crop}]")
            self._check_rows(tensor.name, tensor.shape[0])
            keys = [f"{tensor.name}[{i}]" for i in range(tensor.shape[0])]
            return Request(keys, [], logid=logid, name=self.name, protocol=protocol, tensor=tensor.data)
        raise invalid(f"unknown input {tensor.name!r}; this model takes {self.bytes_input!r} (BYTES) or "
                      f"{self.tensor_input!r} (FP32)")

    def _check_rows(self, name: str, rows: int) -> None:
        if rows == 0:
            raise invalid(f"input {name!r} has no rows")
        if rows > self.max_batch:
            raise invalid(f"input {name!r} has {rows} rows; this server takes at most {self.max_batch} per "
                          "request (max_images_per_request)")

    def check_outputs(self, outputs: list[RequestedOutput]) -> list[RequestedOutput]:
        """The requested outputs, each of the model's outputs at most once: more than MAX_REQUESTED_OUTPUTS
        entries, an unknown name, or one name asked for with two different parameter sets are
        INVALID_ARGUMENT; exact repeats are dropped."""
        if len(outputs) > MAX_REQUESTED_OUTPUTS:
            raise invalid(f"{len(outputs)} requested outputs; send at most {MAX_REQUESTED_OUTPUTS} (this model has "
                          f"one output, {self.output!r})")
        unique: dict[str, RequestedOutput] = {}
        for out in outputs:
            if out.name != self.output:
                raise invalid(f"unknown output {out.name[:200]!r}; this model's output is {self.output!r}")
            self._class_count(out)
            seen = unique.setdefault(out.name, out)
            if seen.parameters != out.parameters:
                raise invalid(f"output {out.name!r} requested twice with different parameters")
        return list(unique.values())

    def _class_count(self, out: RequestedOutput) -> int:
        k = out.parameters.get("classification", 0)
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise invalid(f"output {out.name!r}: parameters.classification must be a non-negative integer, "
                          f"got {k!r}")
        return min(k, self.classes)

    async def infer(self, inputs: list[Tensor], outputs: list[RequestedOutput], request_id: str,
                    protocol: str) -> list[Tensor]:
        """Run the pipeline; the requested outputs (all outputs when none are named), or V2Error."""
        outputs = self.check_outputs(outputs)
        request = self.to_request(inputs, request_id, protocol)
        response = await self.core.infer(request)
        if response.err_no != 0:
            kind = ERR_NO_KINDS.get(ErrorCode(response.err_no) if response.err_no in ErrorCode._value2member_map_
                                    else ErrorCode.UNKNOW, ErrorKind.INTERNAL)
            error = V2Error(kind, response.err_msg, response.err_no)
            error.counted = True
            raise error
        probs = np.asarray(response.probs, np.float32)
        result = []
        for out in outputs or [RequestedOutput(self.output)]:
            k = self._class_count(out)
            if k:
                result.append(Tensor(out.name, "BYTES", [probs.shape[0], k], self.classify(probs, k), out.parameters))
            else:
                result.append(Tensor(out.name, "FP32", list(probs.shape), probs, out.parameters))
        return result

    def classify(self, probs: np.ndarray, k: int) -> list[bytes]:
        """Row-major "score:index:label" for the top k of every row (score as the pipeline's `prob`)."""
        best = top_k(probs, k)
        label = self.core.pipeline.postprocess.label
        return [f"{score!r}:{index}:{label(index)}".encode()
                for ids, scores in zip(best.class_ids, best.scores, strict=True)
                for index, score in zip(ids, scores, strict=True)]
