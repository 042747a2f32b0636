"""PipelineClient request packing, compared with Paddle Serving 0.9's rules (../shared/reference/paddle_serving_protocol.md §5); no server."""

from __future__ import annotations

import io

import numpy as np
import pytest

from resnest_serving.client import PipelineClient
from resnest_serving.client.pipeline_client import _channel_target, pack_request


def test_string_mode():
    arr = np.arange(2000, dtype=np.float32).reshape(2, 1000)
    req = pack_request({"image": "b64text", "x": arr, "l": [1, 2], "logid": 9, "clientip": "1.2.3.4"},
                       profile=True)
    assert list(req.key) == ["image", "x", "l", "pipeline.profile"]
    assert req.value[0] == "b64text" and req.value[3] == "1"
    assert req.value[1].startswith("array([[0.000e+00") and "..." not in req.value[1]  # full repr, no summary
    assert req.value[2] == "array([1, 2])"
    assert (req.logid, req.clientip) == (9, "1.2.3.4")
    assert np.get_printoptions()["threshold"] == 1000  # no global side effect
    with pytest.raises(TypeError, match="only str and np.ndarray"):
        pack_request({"x": 1.5})


def test_feed_dict_is_not_modified_and_clientip_defaults():
    feed = {"image": "abc", "logid": 3}
    req = pack_request(feed)
    assert feed == {"image": "abc", "logid": 3}
    assert req.clientip  # this host's address, as Paddle fills it


def test_tensor_mode():
    feed = {
        "s": "text",
        "f": np.ones((2, 3), np.float32),
        "i8": np.array([1, -2], np.int8),
        "u8": np.array([[255]], np.uint8),
        "b": np.array([True, False]),
        "seq": np.array([1, 2, 3], np.int64),
        "seq.lod": [0, 1, 3],
    }
    req = pack_request(feed, pack_tensor_format=True, profile=True)
    assert not req.key  # profile only applies to string mode, as in Paddle Serving
    t = {x.name: x for x in req.tensors}
    assert list(t) == ["s", "f", "i8", "u8", "b", "seq"]
    assert list(t["s"].str_data) == ["text"] and t["s"].elem_type == 12
    assert list(t["f"].float_data) == [1.0] * 6 and t["f"].elem_type == 1 and list(t["f"].shape) == [2, 3]
    assert list(t["i8"].int_data) == [1, -2] and t["i8"].elem_type == 8
    assert list(t["u8"].uint32_data) == [255] and t["u8"].elem_type == 7
    assert list(t["b"].bool_data) == [True, False] and t["b"].elem_type == 9
    assert list(t["seq"].int64_data) == [1, 2, 3] and list(t["seq"].lod) == [0, 1, 3]

    req = pack_request({"x": np.eye(2)}, pack_tensor_format=True, use_tensor_bytes=True)
    [tensor] = req.tensors
    assert tensor.elem_type == 13
    np.testing.assert_array_equal(np.load(io.BytesIO(tensor.byte_data)), np.eye(2))


def test_predict_argument_checks():
    client = PipelineClient()
    with pytest.raises(TypeError, match="feed must be dict"):
        client.predict(["x"])
    with pytest.raises(TypeError, match="fetch must be list"):
        client.predict({"x": "y"}, fetch="label")
    with pytest.raises(RuntimeError, match="connect"):
        client.predict({"x": "y"})


def test_channel_target():
    assert _channel_target(["127.0.0.1:9993"]) == "ipv4:127.0.0.1:9993"
    assert _channel_target(["127.0.0.1:1", "127.0.0.2:2"]) == "ipv4:127.0.0.1:1,127.0.0.2:2"
    assert _channel_target(["[::1]:9993"]) == "ipv6:[::1]:9993"
    assert _channel_target(["localhost:9993"]) in ("ipv4:127.0.0.1:9993", "ipv6:[::1]:9993")
