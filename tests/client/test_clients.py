"""The sync and asyncio clients against a real server, over every protocol."""

from __future__ import annotations

import asyncio

import cv2
import pytest

from resnest_serving.client import ServingError, TransportError, connect, connect_async

PROTOCOLS = ["grpc", "http", "brpc"]


def ep(server, protocol: str) -> str:
    return f"127.0.0.1:{server.ports[protocol]}"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_classify_one_and_many(topk_server, image_paths, protocol):
    with connect(protocol, ep(topk_server, protocol), timeout=30) as client:
        [one] = client.classify(image_paths[0])
        many = client.classify(image_paths)
        as_array = client.classify(cv2.imread(str(image_paths[0])))  # BGR array, sent as PNG
        as_bytes = client.classify({"daisy": image_paths[-1].read_bytes()})
    assert len(many) == len(image_paths)
    # same image, same answer, whatever the batch around it (floats may differ in the last bits)
    assert many[0].class_ids == one.class_ids and many[0].prob == pytest.approx(one.prob, abs=1e-5)
    for r in [*many, *as_array, *as_bytes]:
        assert len(r.class_ids) == len(r.labels) == len(r.scores) == 3  # the server runs topk 3
        assert list(r.scores) == sorted(r.scores, reverse=True) and 0 <= r.prob <= 1
        assert r.labels[0].replace(",", "") == r.label and abs(r.scores[0] - r.prob) < 1e-4
    assert as_array[0].class_id == one.class_id  # PNG of the decoded JPEG: same pixels


def test_protocols_agree(topk_server, image_paths):
    answers = {}
    for protocol in PROTOCOLS:
        with connect(protocol, ep(topk_server, protocol)) as client:
            answers[protocol] = client.classify(image_paths)
    assert answers["grpc"] == answers["http"] == answers["brpc"]


def test_top1_server_gives_label_and_prob_only(top1_server, image_paths):
    with connect("grpc", ep(top1_server, "grpc")) as client:
        results = client.classify(image_paths[:2])
    assert [len(r.labels) for r in results] == [1, 1] and results[0].class_ids == ()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_async_clients(topk_server, image_paths, protocol):
    async def main():
        async with connect_async(protocol, ep(topk_server, protocol)) as client:
            return await asyncio.gather(*(client.classify(p) for p in image_paths))

    results = asyncio.run(main())
    assert [len(r) for r in results] == [1] * len(image_paths)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_serving_errors(topk_server, image_paths, protocol):
    with connect(protocol, ep(topk_server, protocol)) as client:
        with pytest.raises(ServingError) as bad_image:
            client.classify([image_paths[0], b"this is not an image"])
        assert client.classify(image_paths[0])  # still serving
    assert bad_image.value.err_no == 5000 and "image_1" in bad_image.value.err_msg
    with connect(protocol, ep(topk_server, protocol), service_name="no_such_service") as client:
        with pytest.raises(ServingError) as wrong_name:
            client.classify(image_paths[0])
    assert wrong_name.value.err_no == 3002


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_timeout_is_a_transport_error(topk_server, image_paths, protocol):
    with connect(protocol, ep(topk_server, protocol)) as client:
        with pytest.raises(TransportError) as info:
            client.classify(image_paths, timeout=0.001)
        assert client.classify(image_paths[0], timeout=30)  # the client is still usable
    assert info.value.timeout and info.value.kind == "timeout" and info.value.protocol == protocol

    async def main():
        async with connect_async(protocol, ep(topk_server, protocol)) as client:
            await client.classify(image_paths, timeout=0.001)

    with pytest.raises(TransportError) as info:
        asyncio.run(main())
    assert info.value.timeout


@pytest.mark.parametrize(("protocol", "code"), [("grpc", "UNAVAILABLE"), ("http", "connection"),
                                                ("brpc", "EFAILEDSOCKET")])
def test_nothing_listening(closed_port, image_paths, protocol, code):
    with connect(protocol, f"127.0.0.1:{closed_port}", timeout=5) as client:
        with pytest.raises(TransportError) as info:
            client.classify(image_paths[0])
    assert info.value.code == code and not info.value.timeout


def test_token_without_tls_to_a_remote_host_warns_once_per_host(caplog, tmp_path):
    """Issue #24 (suspected, real): a token went in clear to any host without a word. Nothing is connected here:
    the clients open their connections on the first call."""
    import logging

    from resnest_serving.client import Credentials, connect

    caplog.set_level(logging.WARNING, logger="resnest_serving.client.base")
    token = Credentials(token="a-token-of-twenty-chars")
    for protocol in ("grpc", "http", "brpc"):
        connect(protocol, "192.0.2.7:9993", credentials=token).close()  # TEST-NET-1: never routed
    warnings = [r.getMessage() for r in caplog.records if "without TLS" in r.getMessage()]
    assert len(warnings) == 1 and "sending a bearer token to 192.0.2.7:9993 without TLS" in warnings[0]
    caplog.clear()
    connect("grpc", "127.0.0.1:9993", credentials=token).close()  # loopback: no warning
    connect("grpc", "[::1]:9993", credentials=token).close()
    from support import make_tls_files

    ca = make_tls_files(tmp_path)["ca"]
    connect("grpc", "192.0.2.8:9993", credentials=Credentials(token="a-token-of-twenty-chars", tls_ca=ca)).close()
    connect("http", "192.0.2.9:9993").close()  # no token: nothing to leak
    assert not [r for r in caplog.records if "without TLS" in r.getMessage()]
