"""Each served model as an Open Inference Protocol (KServe V2 / Triton) model, shared by the REST
(serving/v2/rest_door.py) and gRPC (serving/v2/grpc_door.py) front doors: its metadata and Triton model
config, and V2 inputs (decoded by serving/v2/tensors.py) → pipeline.Request → pipeline.Response → V2 outputs.

Each model takes either input (exactly one per request):
  * `image`: BYTES [N] or [N, 1], one encoded image file (JPEG, PNG, ...) per row;
  * the model's feed alias (`x`): FP32 [N, 3, H, W], already preprocessed as the server would.
It answers the fetch alias (`prediction`): FP32 [N, classes] probabilities, or with the classification
extension (`parameters.classification: k` on that output) BYTES [N, k] of "score:index:label".
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import numpy as np

from resnest_serving.pipeline.errors import ErrorCode, PipelineError
from resnest_serving.pipeline.postprocess import top_k
from resnest_serving.pipeline.types import Request
from resnest_serving.protocol.v2 import IMAGE_INPUT
from resnest_serving.serving.core import ServedModel, ServedVersion, ServingCore
from resnest_serving.serving.doors.http_guard import ascii_int
from resnest_serving.serving.errors import ErrorKind, ServingError, from_err_no, invalid
from resnest_serving.serving.v2.repository import LOAD, UNLOAD, check_request
from resnest_serving.serving.v2.tensors import MAX_REQUESTED_OUTPUTS, RequestedOutput, Tensor

log = logging.getLogger(__name__)

SERVER_NAME = "resnest-serving"
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "model_repository",
              "model_repository(index)"]


def logid_of(request_id: str) -> int:
    """The V2 request id as the pipeline's int64 logid when it is an ASCII number below 2**63, else 0 ("²"
    or a 5000-digit id included: never a ValueError)."""
    number = ascii_int(request_id, max_digits=19)
    return number if number is not None and number < 2**63 else 0


class V2Model:
    """One served version of a model as a V2 model, made for each request by V2Models.find (cheap: it reads
    the version's bundle): its metadata, config and inference run on that version's bundle and pipeline.
    `named`: the client named the version; otherwise, when a switch retires the version between finding it
    and running the request, the request runs on the newest one and `version` says which answered."""

    def __init__(self, core: ServingCore, served: ServedModel, version: ServedVersion, named: bool = False):
        self.core = core
        self.served = served
        self.number = version.number
        self.version = str(version.number)
        self.named = named
        self.pipeline = pipeline = version.pipeline
        bundle = pipeline.bundle
        self.name = served.name
        self.crop = bundle.meta.crop_size
        self.classes = bundle.meta.class_num
        self.tensor_input = bundle.feed_alias
        self.bytes_input = IMAGE_INPUT if bundle.feed_alias != IMAGE_INPUT else f"{IMAGE_INPUT}_bytes"
        self.output = bundle.fetch_alias
        self.max_batch = pipeline.settings.max_images_per_request
        self.label_file = bundle.meta.label_file
        report = getattr(pipeline.batcher.engines[0], "report", None)
        self.platform = f"resnest_{report.kind}" if report else "resnest_remote"

    @property
    def ready(self) -> bool:
        return self.served.ready

    def metadata(self) -> dict[str, Any]:
        """Triton's model metadata: the served versions (all of them) and this version's inputs and outputs."""
        versions = [str(v) for v in sorted(self.served.versions)] or [self.version]
        return {"name": self.name, "versions": versions, "platform": self.platform,
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
        """Run the pipeline; the requested outputs (all outputs when none are named), or ServingError."""
        outputs = self.check_outputs(outputs)
        request = self.to_request(inputs, request_id, protocol)
        response, answered = await self.core.infer_version(request, self.number, fallback=not self.named)
        if answered:
            self.version = str(answered)
        if response.err_no != 0:
            raise from_err_no(response.err_no, response.err_msg)
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
        label = self.pipeline.postprocess.label
        return [f"{score!r}:{index}:{label(index)}".encode()
                for ids, scores in zip(best.class_ids, best.scores, strict=True)
                for index, score in zip(ids, scores, strict=True)]


class V2Models:
    """Every served model's V2 view, shared by the REST and gRPC doors: finding a model by name and version
    (the routing itself is ServingCore.model's), server metadata, the repository index and readiness."""

    def __init__(self, core: ServingCore, model_control: str = "none"):
        self.core = core
        self.model_control = model_control  # config.yml's `model_control`: "explicit" opens load and unload

    @property
    def ready(self) -> bool:
        """True when every configured model is ready."""
        return self.core.ready

    def find(self, name: str, version: str = "", open_path: bool = False) -> V2Model:
        """The model `name` (and `version`, if given); NOT_FOUND otherwise. On an `open_path` (model readiness,
        answered without a token) the message names nothing this server serves."""
        try:
            served = self.core.model(name) if name else None
        except PipelineError:
            served = None
        if served is None:
            names = ", ".join(repr(n) for n in self.core.models)
            what = "" if open_path else f"; this server serves {names}"
            raise ServingError(ErrorKind.NOT_FOUND, f"unknown model {name[:200]!r}{what}", int(ErrorCode.NO_SERVICE))
        number = ascii_int(version, max_digits=9) if version else None
        try:
            if version and not number:
                raise PipelineError(ErrorCode.NO_SERVICE, "versions are positive integers")
            routed = served.route(number)
        except PipelineError as exc:
            if served.unloaded:
                raise ServingError(ErrorKind.NOT_FOUND, exc.message, int(ErrorCode.NO_SERVICE)) from None
            have = ", ".join(repr(str(v)) for v in sorted(served.versions))
            has = "" if open_path else f"; it has version {have}"
            raise ServingError(ErrorKind.NOT_FOUND, f"model {name!r} has no version {version[:200]!r}{has}",
                               int(ErrorCode.NO_SERVICE)) from None
        return V2Model(self.core, served, routed, named=bool(version))

    def server_metadata(self) -> dict[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            ours = version(SERVER_NAME)
        except PackageNotFoundError:
            ours = "unknown"
        return {"name": SERVER_NAME, "version": ours, "extensions": list(EXTENSIONS)}

    def repository_index(self) -> list[dict[str, str]]:
        """Triton's repository index: every configured model's versions and their states (the repository's);
        `reason` only when there is one, as Triton writes it."""
        return [{k: v for k, v in asdict(entry).items() if k != "reason" or v} for entry in self.core.repository.index()]

    def reject(self, protocol: str, request_id: str, error: ServingError, model: V2Model | None = None) -> None:
        """Log and count a request refused before it reached a pipeline (once: a counted error is not)."""
        if error.counted:
            return
        name = model.name if model is not None else ""
        log.info("logid=%d protocol=%s id=%r model=%r %s: %s", logid_of(request_id), protocol, request_id[:200],
                 name, error.kind.name, error.message)
        self.core.reject(protocol, error.err_no, name)
        error.counted = True

    async def load(self, name: str, parameters: dict[str, Any] | None = None) -> None:
        """The repository extension's load (serving.v2.repository's rules), by the model repository."""
        self._check_repository_call(LOAD, name, parameters)
        await self.core.repository.load(name)

    async def unload(self, name: str, parameters: dict[str, Any] | None = None) -> None:
        """The repository extension's unload (serving.v2.repository's rules), by the model repository."""
        self._check_repository_call(UNLOAD, name, parameters)
        await self.core.repository.unload(name)

    def _check_repository_call(self, action: str, name: str, parameters: dict[str, Any] | None) -> None:
        """One INFO line per load/unload call (they change what is served): requested, or refused and why."""
        try:
            check_request(action, name, parameters or {}, self.model_control)
        except ServingError as exc:
            log.info("model %r: %s refused (V2 repository extension): %s", name[:200], action, exc.message)
            raise
        log.info("model %r: %s requested (V2 repository extension)", name[:200], action)
