"""Wire facts shared by the server, the clients and the exporter, stated once: Paddle Serving's err_no codes,
element-type codes, the profile key, and the full names of the two RPC services (from the .proto files)."""

from __future__ import annotations

from enum import IntEnum

from resnest_serving.protocol import general_model_service_pb2, pipeline_service_pb2


class ErrorCode(IntEnum):
    """Paddle Serving 0.9 pipeline err_no codes (python/pipeline/error_catch.py)."""

    OK = 0
    PRODUCT_ERROR = 50
    NOT_IMPLEMENTED = 3000
    CLOSED_ERROR = 3001
    NO_SERVICE = 3002
    INIT_ERROR = 3003
    CONF_ERROR = 4000
    INPUT_PARAMS_ERROR = 5000
    TIMEOUT = 6000
    TYPE_ERROR = 7000
    RPC_PACKAGE_ERROR = 8000
    CLIENT_ERROR = 9000
    UNKNOW = 10000  # sic: Paddle Serving's spelling


PROFILE_KEY = "pipeline.profile"  # a request key with value "1" asks for stage timings in the response


class ElemType(IntEnum):
    """Paddle Serving tensor element types (pipeline `Tensor.elem_type`, C++ Serving `Tensor.elem_type`,
    `feed_type`/`fetch_type` in serving_*_conf.prototxt)."""

    INT64 = 0
    FP32 = 1
    INT32 = 2
    FP64 = 3
    INT16 = 4
    FP16 = 5
    BF16 = 6
    UINT8 = 7
    INT8 = 8
    BOOL = 9
    COMPLEX64 = 10
    COMPLEX128 = 11
    STRING = 12  # pipeline proto: str_data joined is the value
    BYTES = 13  # pipeline proto: np.save bytes (a pickle; this server never loads one)
    GENERAL_STRING = 20  # C++ Serving's STRING code


# numpy dtype name -> code, as Paddle Serving's convert writes feed_type/fetch_type.
NUMPY_ELEM_TYPES: dict[str, ElemType] = {
    "int64": ElemType.INT64, "float32": ElemType.FP32, "int32": ElemType.INT32, "float64": ElemType.FP64,
    "int16": ElemType.INT16, "float16": ElemType.FP16, "bfloat16": ElemType.BF16, "uint8": ElemType.UINT8,
    "int8": ElemType.INT8, "bool": ElemType.BOOL, "complex64": ElemType.COMPLEX64,
    "complex128": ElemType.COMPLEX128,
}

PIPELINE_SERVICE = pipeline_service_pb2.DESCRIPTOR.services_by_name["PipelineService"].full_name
GENERAL_MODEL_SERVICE = general_model_service_pb2.DESCRIPTOR.services_by_name["GeneralModelService"].full_name


def elem_name(code: int) -> str:
    """'FP32' for 1; 'unknown' for a code Paddle Serving does not define."""
    if code == ElemType.GENERAL_STRING:
        return "STRING"
    try:
        return ElemType(code).name
    except ValueError:
        return "unknown"
