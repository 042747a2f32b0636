"""Our own Open Inference Protocol clients (no tritonclient), sync and asyncio over REST and gRPC, against
a real server: the same top-k as the Paddle Serving gRPC client, probabilities, errors as TransportError,
and `resnest predict` / `resnest bench` with --protocol v2-http and v2-grpc."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from resnest_serving.cli import main
from resnest_serving.client import TransportError, connect, connect_async


def ep(server, protocol: str) -> str:
    return f"127.0.0.1:{server.ports['http' if protocol == 'v2-http' else 'grpc']}"


@pytest.fixture(scope="module")
def reference(topk_server, image_paths):
    with connect("grpc", f"127.0.0.1:{topk_server.ports['grpc']}") as client:
        return client.classify(image_paths)


def same(got, want) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.class_ids[:3] == w.class_ids and g.labels[:3] == w.labels and g.label == w.label
        assert g.scores[:3] == pytest.approx(w.scores, abs=2e-5) and g.prob == pytest.approx(w.prob, rel=1e-4)


@pytest.mark.parametrize("protocol", ["v2-http", "v2-grpc"])
def test_sync_and_async_classify_like_pipeline(topk_server, image_paths, reference, protocol):
    with connect(protocol, ep(topk_server, protocol)) as client:
        results = client.classify(image_paths)
        assert all(len(r.class_ids) == 5 for r in results)  # the client's topk, not the server's
        same(results, reference)
        probs = client.probabilities(image_paths[:2])
        assert probs.shape == (2, 10) and probs.dtype == np.float32
        assert [int(np.argmax(row)) for row in probs] == [r.class_id for r in reference[:2]]
        response = client.infer(client.build(image_paths[:1]))  # the shared pipeline-Request API
        assert response.err_no == 0 and list(response.key)[:2] == ["label", "prob"]

    async def run():
        async with connect_async(protocol, ep(topk_server, protocol)) as client:
            return await asyncio.gather(*(client.classify([p]) for p in image_paths))

    same([r[0] for r in asyncio.run(run())], reference)


@pytest.mark.parametrize("protocol, code", [("v2-http", 404), ("v2-grpc", "NOT_FOUND")])
def test_errors_are_transport_errors(topk_server, image_paths, protocol, code):
    with connect(protocol, ep(topk_server, protocol), service_name="resnet") as client:
        with pytest.raises(TransportError) as info:
            client.classify(image_paths[:1])
    assert info.value.code == code and info.value.protocol == protocol
    assert "unknown model 'resnet'" in str(info.value) and info.value.kind == f"{protocol} {code}"


@pytest.mark.parametrize("protocol", ["v2-http", "v2-grpc"])
def test_predict_cli(topk_server, image_paths, protocol, capsys):
    rc = main(["predict", "--protocol", protocol, "--endpoint", ep(topk_server, protocol), "--json",
               "--batch", "2", *map(str, image_paths)])
    rows = json.loads(capsys.readouterr().out)
    assert rc == 0 and [r["image"] for r in rows] == [str(p) for p in image_paths]
    assert all(len(r["class_ids"]) == 5 and r["labels"][0].replace(",", "") == r["label"] for r in rows)


@pytest.mark.parametrize("protocol", ["v2-http", "v2-grpc"])
def test_bench_cli(topk_server, image_paths, protocol, tmp_path, capsys):
    report = tmp_path / "bench.json"
    rc = main(["--log-level", "WARNING", "bench", "--protocol", protocol, "--endpoint", ep(topk_server, protocol),
               "--images", str(image_paths[0].parent), "--requests", "30", "--concurrency", "3",
               "--images-per-request", "2", "--warmup", "2", "--metrics-url", topk_server.url("/metrics"),
               "--json", str(report), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0, out
    summary = json.loads(report.read_text())["summary"]
    assert summary["requests"] == summary["successes"] == 30 and summary["errors"] == 0
    assert "server stages" in out


@pytest.mark.parametrize("protocol, refused", [("v2-http", 403), ("v2-grpc", "PERMISSION_DENIED")])
def test_repository_calls(topk_server, protocol, refused):
    """repository_index / load_model / unload_model (tritonclient's names), sync and asyncio: the index as
    plain dicts with all four fields; load and unload refused as TransportError (model_control is off)."""
    with connect(protocol, ep(topk_server, protocol)) as client:
        (entry,) = client.repository_index()
        assert set(entry) == {"name", "version", "state", "reason"}
        assert entry["name"] == "imagenet" and entry["state"] == "READY"
        for call in (client.load_model, client.unload_model):
            with pytest.raises(TransportError) as info:
                call("imagenet")
            assert info.value.code == refused and "model_control: explicit" in str(info.value)

    async def run():
        async with connect_async(protocol, ep(topk_server, protocol)) as client:
            index = await client.repository_index()
            with pytest.raises(TransportError) as info:
                await client.unload_model("imagenet")
            return index, info.value

    index, error = asyncio.run(run())
    assert index == [entry] and error.code == refused
