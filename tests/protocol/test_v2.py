"""The Open Inference Protocol's BYTES framing (protocol/v2.py), as the server and the client share it: round
trip, and every malformed buffer refused with a message that says where it went wrong, never truncated."""

from __future__ import annotations

import struct

import pytest

from resnest_serving.client.errors import BadResponseError
from resnest_serving.client.v2_client import split_bytes_tensor
from resnest_serving.protocol.v2 import BytesFramingError, decode_bytes, encode_bytes, is_v2_path


def test_round_trip_with_empty_elements():
    items = [b"", b"jpeg bytes", b"\x00" * 300, b""]
    assert encode_bytes(items)[:4] == b"\x00\x00\x00\x00"
    assert decode_bytes(encode_bytes(items)) == items
    assert decode_bytes(b"") == []


@pytest.mark.parametrize("blob,match", [
    (encode_bytes([b"abc"]) + b"\x01\x00", "ends inside an element's 4-byte length prefix"),
    (struct.pack("<I", 10) + b"abc", "element 0 claims 10 bytes but only 3 remain"),
    (encode_bytes([b"ok"]) + struct.pack("<I", 2**32 - 1), "element 1 claims 4294967295 bytes"),
])
def test_malformed_buffers_are_refused(blob, match):
    with pytest.raises(BytesFramingError, match=match):
        decode_bytes(blob)


def test_client_refuses_a_malformed_bytes_output_instead_of_truncating():
    good = encode_bytes([b"0.9:1:daisy", b"0.1:2:rose"])
    assert split_bytes_tensor(good, [1, 2]) == [b"0.9:1:daisy", b"0.1:2:rose"]
    with pytest.raises(BadResponseError, match="claims 11 bytes but only 5 remain"):
        split_bytes_tensor(good[:4 + 5], [1, 2])  # the first element cut short
    with pytest.raises(BadResponseError, match="length prefix"):
        split_bytes_tensor(good + b"\x00", [1, 2])  # a trailing byte
    with pytest.raises(BadResponseError, match="shape \\[1, 3\\] needs 3 elements, the data holds 2"):
        split_bytes_tensor(good, [1, 3])


def test_v2_paths():
    assert is_v2_path("/v2") and is_v2_path("/v2/models/m/infer")
    assert not is_v2_path("/v2x") and not is_v2_path("/imagenet/prediction")
