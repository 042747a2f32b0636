"""The response cache on a real server (tiny model): `op.imagenet.response_cache_mb` turns it on; a repeated
image is answered byte for byte as the first time on every door (base64 and raw bytes share entries) without
an engine batch; a partial hit answers in request order; the size limit evicts; off by default."""

from __future__ import annotations

import base64
import json
import re
import struct

import cv2
import grpc
import numpy as np
import pytest
import requests

from resnest_serving.protocol import pipeline_service_pb2 as pb
from resnest_serving.protocol import pipeline_service_pb2_grpc as pb_grpc

HEADER = "Inference-Header-Content-Length"
CACHE_MB = 0.001  # 1048 bytes: four entries of the tiny model (10 classes: 40 bytes + 200 overhead each)


@pytest.fixture(scope="module")
def cached_server(tmp_path_factory, tiny_model_dir):
    from support import serving, write_config

    cfg = write_config(tmp_path_factory.mktemp("cache") / "config.yml", tiny_model_dir,
                       op={"topk": 3, "response_cache_mb": CACHE_MB})
    with serving(cfg) as server:
        yield server


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def metric(server, name: str) -> float:
    """A sample's value in /metrics (0 when the sample is absent)."""
    text = requests.get(server.url("/metrics"), timeout=10).text
    found = re.search(rf"^{re.escape(name)} ([\d.e+-]+)$", text, re.M)
    return float(found[1]) if found else 0.0


def counts(server) -> tuple[float, float, float]:
    """(engine batches, cache hits, cache misses) so far."""
    return (metric(server, 'resnest_batch_images_count{model="imagenet"}'),
            metric(server, 'resnest_response_cache_hits_total{model="imagenet"}'),
            metric(server, 'resnest_response_cache_misses_total{model="imagenet"}'))


def grpc_values(server, images: list[bytes]) -> list[str]:
    request = pb.Request(key=[f"image_{i}" for i in range(len(images))], value=[b64(x) for x in images],
                         name="imagenet")
    with grpc.insecure_channel(f"127.0.0.1:{server.ports['grpc']}") as channel:
        answer = pb_grpc.PipelineServiceStub(channel).inference(request, timeout=30)
    assert answer.err_no == 0, answer.err_msg
    return list(answer.value)


def rest_values(server, images: list[bytes]) -> list[str]:
    body = {"key": [f"image_{i}" for i in range(len(images))], "value": [b64(x) for x in images]}
    answer = requests.post(server.url("/imagenet/prediction"), data=json.dumps(body), timeout=30).json()
    assert answer["err_no"] == 0, answer
    return answer["value"]


def v2_bytes(server, *images: bytes) -> bytes:
    """The FP32 output rows of a V2 binary request carrying the image files as raw BYTES."""
    blob = b"".join(struct.pack("<I", len(image)) + image for image in images)
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images), 1],
                                     "parameters": {"binary_data_size": len(blob)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    reply = requests.post(server.url("/v2/models/imagenet/infer"), data=header + blob, timeout=30,
                          headers={HEADER: str(len(header)), "Content-Type": "application/octet-stream"})
    assert reply.status_code == 200, reply.text
    return reply.content[int(reply.headers[HEADER]):]


def synthetic_jpeg(seed: int) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (80, 96, 3), dtype=np.uint8)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return data.tobytes()


def test_hits_equal_misses_across_protocols_and_skip_the_engine(cached_server, image_paths):
    a, b = (p.read_bytes() for p in image_paths[:2])
    batches, hits, misses = counts(cached_server)

    first = grpc_values(cached_server, [a])  # a miss: one engine batch
    assert counts(cached_server) == (batches + 1, hits, misses + 1)
    assert grpc_values(cached_server, [a]) == first  # hits: the same bytes, no batch
    assert rest_values(cached_server, [a]) == first
    v2_hit = v2_bytes(cached_server, a)  # raw bytes share the base64 request's entry
    assert counts(cached_server) == (batches + 1, hits + 3, misses + 1)

    v2_miss = v2_bytes(cached_server, b)
    assert v2_bytes(cached_server, b) == v2_miss and v2_hit != v2_miss
    assert counts(cached_server) == (batches + 2, hits + 4, misses + 2)


def test_partial_hit_answers_both_images_in_order(cached_server, image_paths):
    c, d = (p.read_bytes() for p in image_paths[2:4])
    alone_d = v2_bytes(cached_server, d)
    batches, hits, misses = counts(cached_server)
    both = v2_bytes(cached_server, c, d)  # d cached, c not: one batch of one image
    assert counts(cached_server) == (batches + 1, hits + 1, misses + 1)
    assert metric(cached_server, 'resnest_batch_images_bucket{le="1.0",model="imagenet"}') == batches + 1
    assert len(both) == 2 * len(alone_d) and both == v2_bytes(cached_server, c) + alone_d  # rows in order
    assert both[:len(alone_d)] != alone_d  # two different rows, so the order is seen
    assert v2_bytes(cached_server, d, c) == alone_d + both[:len(alone_d)]


def test_size_limit_evicts_the_least_recently_used(cached_server):
    images = [synthetic_jpeg(seed) for seed in range(6)]
    for image in images:
        grpc_values(cached_server, [image])
    assert 0 < metric(cached_server, 'resnest_response_cache_bytes{model="imagenet"}') <= CACHE_MB * (1 << 20)
    batches, hits, misses = counts(cached_server)
    grpc_values(cached_server, [images[0]])  # evicted by the five after it: runs again
    grpc_values(cached_server, [images[-1]])  # the most recent: still there
    assert counts(cached_server) == (batches + 1, hits + 1, misses + 1)


def test_off_by_default(tiny_server, image_paths):
    image = image_paths[0].read_bytes()
    grpc_values(tiny_server, [image])
    grpc_values(tiny_server, [image])
    text = requests.get(tiny_server.url("/metrics"), timeout=10).text
    assert not re.search(r"^resnest_response_cache_\w+\{", text, re.M)  # no sample: nothing counted
