"""C++ Serving's GeneralModelService messages as numpy arrays: the batch encoder a pipeline's remote engine
sends, and the tensor decoder both sides use."""

from __future__ import annotations

import numpy as np

from resnest_serving.protocol import general_model_service_pb2 as gm
from resnest_serving.protocol.wire import ElemType, elem_name

# Raw dtypes of tensor_content per elem_type (C++ Serving reads tensor_content for these).
CONTENT_DTYPES = {ElemType.FP32: np.dtype("<f4"), ElemType.FP16: np.dtype("<f2"), ElemType.UINT8: np.dtype("u1")}

_REQUEST_TENSOR_TAG = b"\x0a"  # Request.tensor: field 1, length-delimited
_TENSOR_FLOAT_DATA_TAG = b"\x12"  # Tensor.float_data: field 2, packed (length-delimited)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_request(batch: np.ndarray, feed_name: str, feed_alias: str, fetch: list[str], log_id: int = 0,
                   use_tensor_content: bool = False) -> bytes:
    """Serialized ``Request`` with ``batch`` as one FP32 tensor in ``float_data`` (what a real C++ Serving 0.9
    reads for FP32) or ``tensor_content``. Parses exactly like protobuf's own encoding (fields may come in any
    order), without converting millions of floats one by one."""
    data = np.ascontiguousarray(batch, dtype="<f4").tobytes()
    tensor = gm.Tensor(name=feed_name, alias_name=feed_alias, elem_type=ElemType.FP32, shape=list(batch.shape))
    if use_tensor_content:
        tensor.tensor_content = data
        body = tensor.SerializeToString()
    else:
        body = tensor.SerializeToString() + _TENSOR_FLOAT_DATA_TAG + _varint(len(data)) + data
    rest = gm.Request(fetch_var_names=fetch, log_id=log_id).SerializeToString()
    return _REQUEST_TENSOR_TAG + _varint(len(body)) + body + rest


def tensor_values(tensor: gm.Tensor) -> np.ndarray:
    """The tensor's numbers, flat, from ``float_data`` or ``tensor_content`` by elem_type (FP16/UINT8 cast
    as they are, no scaling); ValueError saying what is wrong otherwise."""
    elem = tensor.elem_type
    if elem == ElemType.FP32 and len(tensor.float_data):
        if tensor.tensor_content:
            raise ValueError("both float_data and tensor_content are set; send one")
        return np.array(tensor.float_data, dtype=np.float32)
    if elem in CONTENT_DTYPES:
        dtype = CONTENT_DTYPES[ElemType(elem)]
        content = tensor.tensor_content
        if len(content) % dtype.itemsize:
            raise ValueError(f"tensor_content has {len(content)} bytes, not a whole number of {elem_name(elem)} "
                             f"values ({dtype.itemsize} bytes each)")
        return np.frombuffer(content, dtype=dtype)
    raise ValueError(f"elem_type {elem} ({elem_name(elem)}) is not supported; send FP32 (1) in float_data or "
                     "tensor_content, or FP16 (5) / UINT8 (7) in tensor_content")
