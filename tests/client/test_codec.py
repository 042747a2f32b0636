"""Request building, image encoding and response parsing (no server)."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest

from resnest_serving.client.base import is_loopback, parse_endpoint
from resnest_serving.client.codec import Classification, build_request, parse_classifications, safe_literal
from resnest_serving.client.errors import BadResponseError, ServingError, TransportError
from resnest_serving.client.images import encode_image, named_images
from resnest_serving.protocol.pipeline_service_pb2 import Response


def response(**values: str) -> Response:
    return Response(err_no=0, key=list(values), value=list(values.values()))


def test_top1_response_like_paddleclas():
    [r] = parse_classifications(response(label="['daisy']", prob="[0.9341402053833008]"), 1)
    assert r == Classification("daisy", 0.9341402053833008, ("daisy",), (0.9341402053833008,), ())
    assert r.class_id is None
    assert r.to_dict() == {"label": "daisy", "prob": 0.9341402053833008, "labels": ["daisy"],
                           "scores": [0.9341402053833008], "class_ids": []}


def test_topk_response():
    resp = response(label="['a', 'b']", prob="[0.5, 0.75]", class_ids="[[1, 2], [3, 1]]",
                    scores="[[0.5, 0.25], [0.75, 0.125]]", label_names="[['a,', 'b'], ['b', 'a,']]")
    first, second = parse_classifications(resp, 2)
    assert first.class_ids == (1, 2) and first.labels == ("a,", "b") and first.scores == (0.5, 0.25)
    assert second.class_id == 3 and second.label == "b" and second.prob == 0.75


@pytest.mark.parametrize("text", [
    "__import__('os')",
    "__import__('os').system('true')",
    "open('/etc/passwd').read()",
    "[x for x in ()]",
    "(lambda: 1)()",
    "array([0.1], dtype=float32)",
])
def test_safe_literal_rejects_code(text):
    with pytest.raises(BadResponseError, match="not a Python literal"):
        safe_literal(text)


def test_code_in_a_response_is_a_bad_response_not_executed():
    with pytest.raises(BadResponseError):
        parse_classifications(response(label="__import__('os')", prob="[0.5]"))


def test_safe_literal_limits_and_types():
    assert safe_literal("[1, 'a', 2.5]") == [1, "a", 2.5]
    with pytest.raises(BadResponseError, match="too long"):
        safe_literal("[" + "1," * 100 + "]", max_chars=50)
    with pytest.raises(BadResponseError):
        safe_literal("[" * 100_000 + "]" * 100_000)  # deep nesting: RecursionError/MemoryError/SyntaxError
    with pytest.raises(BadResponseError, match="not str"):
        safe_literal(b"[1]")  # type: ignore[arg-type]


@pytest.mark.parametrize(("values", "n", "match"), [
    ({"label": "['a']"}, 1, "lacks key"),
    ({"label": "['a']", "prob": "[0.5]"}, 2, "1 results for 2 images"),
    ({"label": "[]", "prob": "[]"}, None, "no results"),
    ({"label": "['a', 'b']", "prob": "[0.5]"}, None, "2 labels but 1 probs"),
    ({"label": "'a'", "prob": "[0.5]"}, None, "not a list"),
    ({"label": "[1]", "prob": "[0.5]"}, None, "not a str"),
    ({"label": "['a']", "prob": "[True]"}, None, "not a finite number"),
    ({"label": "['a']", "prob": "['0.5']"}, None, "not a finite number"),
    ({"label": "['a']", "prob": "[0.5]", "class_ids": "[[1.5]]", "scores": "[[0.5]]", "label_names": "[['a']]"},
     1, "not an int"),
    ({"label": "['a']", "prob": "[0.5]", "class_ids": "[[1, 2]]", "scores": "[[0.5]]", "label_names": "[['a']]"},
     1, "differ in length"),
    ({"label": "['a']", "prob": "[0.5]", "class_ids": "[]", "scores": "[]", "label_names": "[]"},
     1, "should list 1 images"),
    ({"label": "['a']", "prob": "[0.5]", "class_ids": "[[]]", "scores": "[[]]", "label_names": "[[]]"},
     1, "is empty"),
])
def test_bad_responses(values, n, match):
    with pytest.raises(BadResponseError, match=match):
        parse_classifications(response(**values), n)


def test_key_value_mismatch_and_err_no():
    with pytest.raises(BadResponseError, match="2 keys but 1 values"):
        parse_classifications(Response(key=["label", "prob"], value=["['a']"]))
    with pytest.raises(ServingError) as info:
        parse_classifications(Response(err_no=5000, err_msg="image 'x': not an image"))
    assert info.value.err_no == 5000 and info.value.err_msg == "image 'x': not an image"
    assert info.value.kind == "err_no 5000" and "INPUT_PARAMS_ERROR" in str(info.value)


def test_error_kinds():
    assert TransportError("x", protocol="grpc", code="UNAVAILABLE").kind == "grpc UNAVAILABLE"
    assert TransportError("x", protocol="http", code=503).kind == "http 503"
    assert TransportError("x", protocol="brpc", code="ERPCTIMEDOUT", timeout=True).kind == "timeout"
    assert BadResponseError("x").kind == "bad_response"


def test_build_request():
    req = build_request([("image_0", "AAA"), ("image_1", "BBB")], service_name="imagenet", log_id=7)
    assert list(req.key) == ["image_0", "image_1"] and list(req.value) == ["AAA", "BBB"]
    assert (req.name, req.method, req.logid) == ("imagenet", "prediction", 7)
    with pytest.raises(ValueError, match="duplicate"):
        build_request([("a", "1"), ("a", "2")])


def test_images_paths_bytes_arrays(tmp_path):
    path = tmp_path / "x.jpg"
    path.write_bytes(b"\xff\xd8jpeg")
    assert base64.b64decode(encode_image(path)) == b"\xff\xd8jpeg"
    assert base64.b64decode(encode_image(str(path))) == b"\xff\xd8jpeg"
    assert base64.b64decode(encode_image(bytearray(b"abc"))) == b"abc"

    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 200  # red in RGB order
    decoded = cv2.imdecode(np.frombuffer(base64.b64decode(encode_image(rgb, channel_order="rgb")), np.uint8),
                           cv2.IMREAD_COLOR)
    assert decoded.shape == (4, 5, 3) and decoded[0, 0].tolist() == [0, 0, 200]  # BGR after decoding: lossless PNG
    as_bgr = cv2.imdecode(np.frombuffer(base64.b64decode(encode_image(rgb)), np.uint8), cv2.IMREAD_COLOR)
    assert as_bgr[0, 0].tolist() == [200, 0, 0]
    gray = cv2.imdecode(np.frombuffer(base64.b64decode(encode_image(np.full((3, 3), 7, np.uint8))), np.uint8),
                        cv2.IMREAD_UNCHANGED)
    assert gray.tolist() == [[7] * 3] * 3
    with pytest.raises(TypeError, match="uint8"):
        encode_image(np.zeros((2, 2, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        encode_image(np.zeros((2, 2, 5), np.uint8))
    with pytest.raises(TypeError):
        encode_image(42)  # type: ignore[arg-type]


def test_named_images():
    assert [k for k, _ in named_images("a.jpg")] == ["image_0"]
    assert [k for k, _ in named_images(["a", "b"])] == ["image_0", "image_1"]
    assert [k for k, _ in named_images({"cat": "a", "dog": "b"})] == ["cat", "dog"]
    assert len(named_images(np.zeros((3, 4, 4, 3), np.uint8))) == 3
    assert len(named_images(np.zeros((4, 4, 3), np.uint8))) == 1
    with pytest.raises(ValueError, match="no images"):
        named_images([])


def test_endpoints_and_loopback():
    assert parse_endpoint("127.0.0.1:9993") == ("127.0.0.1", 9993)
    assert parse_endpoint("[::1]:80") == ("::1", 80)
    assert parse_endpoint("localhost:18080") == ("localhost", 18080)
    for bad in ("127.0.0.1", ":80", "host:0", "host:http", "host:70000"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)
    assert is_loopback("127.0.0.1") and is_loopback("127.8.9.10") and is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("10.1.2.3") and not is_loopback("0.0.0.0") and not is_loopback("8.8.8.8")
    assert not is_loopback("no-such-host.invalid")
