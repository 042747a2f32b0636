"""Open Inference Protocol (KServe V2) over gRPC: `inference.GRPCInferenceService` on the rpc_port beside
Paddle Serving's PipelineService. Inputs in `raw_input_contents` (what tritonclient sends) or typed
`contents`; outputs always in `raw_output_contents` (tritonclient's `as_numpy` reads only those). Errors
are gRPC status codes (INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE, INTERNAL; PERMISSION_DENIED for load/unload
without `model_control: explicit`) with the message."""

from __future__ import annotations

import math
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format

from resnest_serving.protocol import grpc_predict_v2_pb2 as pb
from resnest_serving.protocol import grpc_predict_v2_pb2_grpc as pb_grpc
from resnest_serving.protocol.v2 import NUMERIC_DTYPES
from resnest_serving.serving.doors.statuses import grpc_abort
from resnest_serving.serving.errors import ServingError, invalid
from resnest_serving.serving.v2.model import V2Models
from resnest_serving.serving.v2.tensors import (
    RequestedOutput,
    Tensor,
    check_datatype,
    check_shape,
    decode_raw,
    encode_raw,
)

PROTOCOL = "v2-grpc"

CONTENTS_FIELDS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
                   "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
                   "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
                   "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}
"""V2 datatype → the InferTensorContents field that carries it (FP16/BF16 have none: raw only)."""


def parameters(params: Any) -> dict[str, Any]:
    """A map<string, InferParameter> as plain Python values."""
    out = {}
    for key, value in params.items():
        which = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, which) if which else None
    return out


def decode_inputs(request: pb.ModelInferRequest) -> list[Tensor]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise invalid(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; send all "
                      "inputs raw or none")
    inputs = []
    for i, item in enumerate(request.inputs):
        name = item.name
        datatype = check_datatype(name, item.datatype)
        shape = check_shape(name, [int(d) for d in item.shape])
        if raw:
            data = decode_raw(name, datatype, shape, raw[i])
        else:
            data = _typed(name, datatype, shape, item.contents)
        inputs.append(Tensor(name, datatype, shape, data, parameters(item.parameters)))
    return inputs


def _typed(name: str, datatype: str, shape: list[int], contents: pb.InferTensorContents) -> np.ndarray | list[bytes]:
    field = CONTENTS_FIELDS.get(datatype)
    if field is None:
        raise invalid(f"input {name!r}: {datatype} has no typed contents field; send it in raw_input_contents")
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise invalid(f"input {name!r}: shape {shape} needs {count} elements, contents.{field} has {len(values)}")
    if datatype == "BYTES":
        return list(values)
    return np.asarray(values, NUMERIC_DTYPES[datatype]).reshape(shape)


class V2Servicer(pb_grpc.GRPCInferenceServiceServicer):
    """GRPCInferenceService over the served models."""

    def __init__(self, models: V2Models):
        self.models = models

    async def ServerLive(self, request: pb.ServerLiveRequest, context) -> pb.ServerLiveResponse:  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context) -> pb.ServerReadyResponse:  # noqa: N802
        return pb.ServerReadyResponse(ready=self.models.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest, context) -> pb.ModelReadyResponse:  # noqa: N802
        try:
            model = self.models.find(request.name, request.version, open_path=True)  # open: names nothing served
        except ServingError as exc:
            await grpc_abort(context, exc)
        return pb.ModelReadyResponse(ready=model.ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context) -> pb.ServerMetadataResponse:  # noqa: N802
        return json_format.ParseDict(self.models.server_metadata(), pb.ServerMetadataResponse())

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context) -> pb.ModelMetadataResponse:  # noqa: N802
        try:
            model = self.models.find(request.name, request.version)
        except ServingError as exc:
            await grpc_abort(context, exc)
        return json_format.ParseDict(model.metadata(), pb.ModelMetadataResponse())

    async def ModelConfig(self, request: pb.ModelConfigRequest, context) -> pb.ModelConfigResponse:  # noqa: N802
        try:
            model = self.models.find(request.name, request.version)
        except ServingError as exc:
            await grpc_abort(context, exc)
        return pb.ModelConfigResponse(config=json_format.ParseDict(model.config(), pb.ModelConfig()))

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context) -> pb.RepositoryIndexResponse:  # noqa: N802
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**m)
                                                  for m in self.models.repository_index()])

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest,  # noqa: N802
                                  context) -> pb.RepositoryModelLoadResponse:
        try:
            await self.models.load(request.model_name, parameters(request.parameters))
        except ServingError as exc:
            await grpc_abort(context, exc)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest,  # noqa: N802
                                    context) -> pb.RepositoryModelUnloadResponse:
        try:
            await self.models.unload(request.model_name, parameters(request.parameters))
        except ServingError as exc:
            await grpc_abort(context, exc)
        return pb.RepositoryModelUnloadResponse()

    async def ModelInfer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:  # noqa: N802
        model = None
        try:
            model = self.models.find(request.model_name, request.model_version)
            inputs = decode_inputs(request)
            outputs = [RequestedOutput(o.name, parameters(o.parameters)) for o in request.outputs]
            result = await model.infer(inputs, outputs, request.id, PROTOCOL)
        except ServingError as exc:
            self.models.reject(PROTOCOL, request.id, exc, model)
            await grpc_abort(context, exc)
        response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)
        for tensor in result:
            response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            response.raw_output_contents.append(encode_raw(tensor))
        return response


def add_to_server(models: V2Models, server: grpc.aio.Server) -> None:
    """Register GRPCInferenceService for `models` on `server` (beside PipelineService)."""
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(V2Servicer(models), server)
