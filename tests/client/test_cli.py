"""`resnest predict` and `resnest bench` end to end against a real server."""

from __future__ import annotations

import json

import pytest

from resnest_serving.cli import main


def ep(server, protocol: str) -> str:
    """The server's address for `protocol` (the Open Inference Protocol shares the HTTP and gRPC ports)."""
    return f"127.0.0.1:{server.ports[protocol.removeprefix('v2-')]}"


@pytest.mark.parametrize("protocol", ["grpc", "http", "brpc"])
def test_predict_table(topk_server, image_paths, protocol, capsys):
    rc = main(["predict", "--protocol", protocol, "--endpoint", ep(topk_server, protocol), "--batch", "2",
               *map(str, image_paths)])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert out[0].split() == ["image", "label", "prob", "top-k"]
    assert [line.split()[0] for line in out[2:]] == [p.name for p in image_paths]


def test_predict_json_and_errors(topk_server, image_paths, tmp_path, capsys):
    rc = main(["predict", "--endpoint", ep(topk_server, "grpc"), "--json", str(image_paths[0].parent)])
    rows = json.loads(capsys.readouterr().out)
    assert rc == 0 and [r["image"] for r in rows] == [str(p) for p in image_paths]
    assert all(len(r["class_ids"]) == 3 and r["labels"][0].replace(",", "") == r["label"] for r in rows)

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    rc = main(["predict", "--endpoint", ep(topk_server, "grpc"), str(broken), str(image_paths[0])])
    captured = capsys.readouterr()
    assert rc == 1 and "err_no 5000" in captured.err and "broken.jpg" in captured.err
    assert image_paths[0].name in captured.out  # the good image still got its answer


def test_bench_run_with_json_and_plot(topk_server, image_paths, tmp_path, capsys):
    report, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    rc = main(["--log-level", "WARNING", "bench", "--protocol", "grpc", "--endpoint", ep(topk_server, "grpc"),
               "--images", str(image_paths[0].parent), "--duration", "3", "--concurrency", "3",
               "--images-per-request", "2", "--warmup", "3", "--metrics-url", topk_server.url("/metrics"),
               "--json", str(report), "--plot", str(plot), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "latency p99 (ms)" in out and "server stages" in out and "preprocess" in out
    data = json.loads(report.read_text())
    s = data["summary"]
    assert s["requests"] == s["successes"] + s["errors"] == len(data["samples"]) > 0
    assert s["errors"] == 0 and s["images_per_s"] == pytest.approx(2 * s["qps"])
    lat = s["latency_ms"]
    assert lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert all(x["images"] == 2 and x["error"] is None for x in data["samples"])
    assert max(x["t_s"] for x in data["samples"]) < 3.0
    assert data["server"]["available"] and data["server"]["stages_ms"]["total"]["count"] == s["requests"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_sweep(topk_server, tmp_path, capsys):
    report, plot = tmp_path / "sweep.json", tmp_path / "sweep.png"
    rc = main(["--log-level", "WARNING", "bench", "--protocol", "brpc", "--endpoint", ep(topk_server, "brpc"),
               "--concurrency", "1,2", "--duration", "1", "--json", str(report), "--plot", str(plot), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0, out
    data = json.loads(report.read_text())
    assert [level["concurrency"] for level in data["levels"]] == [1, 2]
    assert data["knee"] in (1, 2) and "knee (*): concurrency" in out
    assert all(level["summary"]["successes"] > 0 for level in data["levels"])
    assert plot.stat().st_size > 0


def test_bench_open_loop(topk_server, tmp_path, capsys):
    report = tmp_path / "open.json"
    rc = main(["--log-level", "WARNING", "bench", "--protocol", "http", "--endpoint", ep(topk_server, "http"),
               "--rate", "20", "--arrivals", "uniform", "--requests", "10", "--concurrency", "4", "--json",
               str(report), "--quiet"])
    assert rc == 0 and "open loop at 20 req/s" in capsys.readouterr().out
    data = json.loads(report.read_text())
    starts = sorted(x["t_s"] for x in data["samples"])
    assert len(starts) == 10
    assert all(t >= i * 0.05 - 1e-3 for i, t in enumerate(starts))  # never ahead of the 20 req/s schedule
    assert "late_starts" in data["summary"]
    assert data["server"]["available"]  # --protocol http: /metrics on the same port by default


def test_bench_counts_server_errors(topk_server, tmp_path, capsys):
    report = tmp_path / "errors.json"
    rc = main(["--log-level", "ERROR", "bench", "--protocol", "http", "--endpoint", ep(topk_server, "http"),
               "--service-name", "nope", "--requests", "4", "--warmup", "0", "--json", str(report), "--quiet"])
    assert rc == 1
    s = json.loads(report.read_text())["summary"]
    assert s["errors_by_kind"] == {"err_no 3002": 4} and s["successes"] == 0
    assert "err_no 3002" in capsys.readouterr().out

    # with warm-up, a server that fails everything stops the run before measuring
    rc = main(["--log-level", "ERROR", "bench", "--protocol", "http", "--endpoint", ep(topk_server, "http"),
               "--service-name", "nope", "--duration", "30", "--quiet"])
    out = capsys.readouterr()
    assert rc == 1 and "warm-up requests failed, not measuring" in out.out + out.err


@pytest.mark.parametrize("args", [
    ["--endpoint", "10.1.2.3:9993"],
    ["--protocol", "http", "--endpoint", "127.0.0.1:18080", "--metrics-url", "http://192.0.2.1:18080/metrics"],
    ["--endpoint", "127.0.0.1:9993", "--duration", "0"],
    ["--endpoint", "127.0.0.1:9993", "--requests", "0"],
])
def test_bench_refusals(args, image_paths, capsys):
    assert main(["bench", "--images", str(image_paths[0].parent), "--quiet", *args]) == 2


def test_predict_in_process_matches_local_classifier(tiny_model_dir, image_paths, capsys):
    """`resnest predict --model-dir DIR` classifies without a server, with the pipeline's own code."""
    import json as _json

    from resnest_serving.cli import main
    from resnest_serving.pipeline.local import LocalClassifier

    assert main(["predict", "--model-dir", str(tiny_model_dir), "--topk", "3", "--json", *map(str, image_paths)]) == 0
    rows = _json.loads(capsys.readouterr().out)
    want = LocalClassifier(tiny_model_dir).classify_files(image_paths, 3)
    assert [r["class_ids"] for r in rows] == [w.class_ids for w in want]
    assert [r["label"] for r in rows] == [w.labels[0].replace(",", "") for w in want]


def test_bench_knee_fraction_and_timeout(topk_server, tmp_path, capsys):
    report = tmp_path / "knee.json"
    rc = main(["--log-level", "WARNING", "bench", "--protocol", "grpc", "--endpoint", ep(topk_server, "grpc"),
               "--concurrency", "1,2", "--requests", "6", "--knee-fraction", "0.01", "--json", str(report),
               "--quiet"])
    assert rc == 0
    assert json.loads(report.read_text())["knee"] == 1  # any positive throughput reaches 1 % of the best

    report = tmp_path / "timeout.json"
    rc = main(["--log-level", "ERROR", "bench", "--protocol", "grpc", "--endpoint", ep(topk_server, "grpc"),
               "--requests", "3", "--warmup", "0", "--timeout", "0.0005", "--json", str(report), "--quiet"])
    summary = json.loads(report.read_text())["summary"]
    assert rc == 1 and summary["errors_by_kind"] == {"timeout": 3}  # 0.5 ms: no answer can make it
    capsys.readouterr()


def test_bench_seed_decides_which_images_are_sent(topk_server, image_paths, tmp_path, capsys):
    """--seed: the same seed sends the same images in the same order (recorded per sample); another seed
    sends another sequence."""
    def image_sequence(seed: int) -> list[list[int]]:
        report = tmp_path / f"seed{seed}-{len(list(tmp_path.iterdir()))}.json"
        rc = main(["--log-level", "WARNING", "bench", "--protocol", "grpc", "--endpoint", ep(topk_server, "grpc"),
                   "--images", str(image_paths[0].parent), "--requests", "12", "--concurrency", "1",
                   "--warmup", "0", "--seed", str(seed), "--json", str(report), "--quiet"])
        assert rc == 0, capsys.readouterr().out
        return [sample["image_ids"] for sample in json.loads(report.read_text())["samples"]]

    first = image_sequence(3)
    assert len(first) == 12 and all(len(ids) == 1 and 0 <= ids[0] < len(image_paths) for ids in first)
    assert image_sequence(3) == first
    assert image_sequence(4) != first


def test_bench_answer_check_catches_servers_that_disagree(tmp_path, tiny_export, label_file, image_paths, capsys):
    """Two model servers with different weights behind one pipeline (a rolling upgrade gone wrong): the
    same image gets a different top-1 from each in turn. bench counts those as wrong_answer and exits 1;
    with --no-answer-check it counts none."""
    from resnest_serving.export.exporter import ExportOptions, export
    from resnest_serving.pipeline.local import LocalClassifier
    from support import ServerProcess, write_config

    other = export(ExportOptions(arch="ResNeSt_tiny", out=tmp_path / "other", random_init=True, seed=8,
                                 label_file=label_file, onnx=False))
    image = image_paths[0]
    answers = {LocalClassifier(d).classify_files([image], k=1)[0].class_ids[0]
               for d in (tiny_export.server_dir, other.server_dir)}
    assert len(answers) == 2, "the two random models happen to agree on this image; pick another seed"
    images = tmp_path / "one_image"
    images.mkdir()
    (images / image.name).write_bytes(image.read_bytes())
    models = [ServerProcess(write_config(tmp_path / f"model{i}.yml", d, top={"rpc_port": None}),
                            extra_args=["--model-server"])
              for i, d in enumerate((tiny_export.server_dir, other.server_dir))]
    try:
        endpoints = [f"127.0.0.1:{m.ports['brpc']}" for m in models]
        pipeline = ServerProcess(write_config(tmp_path / "pipeline.yml", tiny_export.server_dir,
                                              op={"server_endpoints": endpoints}, lsc={"client_type": "brpc"}))
        try:
            common = ["--log-level", "WARNING", "bench", "--protocol", "grpc", "--endpoint", ep(pipeline, "grpc"),
                      "--images", str(images), "--requests", "10", "--concurrency", "1", "--warmup", "0", "--quiet"]
            assert main([*common, "--json", str(tmp_path / "checked.json")]) == 1
            checked = json.loads((tmp_path / "checked.json").read_text())
            wrong = [s for s in checked["samples"] if s["error"] == "wrong_answer"]
            assert 4 <= len(wrong) <= 5 and "top-1" in checked["error_examples"]["wrong_answer"]
            assert main([*common, "--no-answer-check", "--json", str(tmp_path / "unchecked.json")]) == 0
            unchecked = json.loads((tmp_path / "unchecked.json").read_text())
            assert all(s["error"] is None for s in unchecked["samples"]) and len(unchecked["samples"]) == 10
        finally:
            pipeline.stop()
    finally:
        for model in models:
            model.stop()
    capsys.readouterr()


@pytest.mark.parametrize("protocol", ["grpc", "http", "brpc", "v2-http", "v2-grpc"])
def test_predict_and_bench_name_the_model(topk_server, image_paths, protocol, capsys):
    """`--model NAME` (Paddle Serving's `--service-name`) picks the served model on every protocol; a name the
    server does not serve is that protocol's error; `--model-version` reaches the Open Inference Protocol."""
    args = ["predict", "--protocol", protocol, "--endpoint", ep(topk_server, protocol), "--json", str(image_paths[0])]
    assert main([*args, "--model", "imagenet"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["image"] == str(image_paths[0])
    assert main([*args, "--service-name", "other"]) == 1
    err = json.loads(capsys.readouterr().out)[0]["error"]["message"]
    assert "unknown model 'other'" in err if protocol.startswith("v2") else "err_no 3002" in err, err
    rc = main(["--log-level", "WARNING", "bench", "--protocol", protocol, "--endpoint", ep(topk_server, protocol),
               "--model", "imagenet", "--images", str(image_paths[0].parent), "--requests", "4", "--warmup", "1",
               "--quiet", "--metrics-url", topk_server.url("/metrics")])
    assert rc == 0, capsys.readouterr().out
    capsys.readouterr()
    if protocol.startswith("v2"):
        assert main([*args, "--model-version", "1"]) == 0
        capsys.readouterr()
        assert main([*args, "--model-version", "2"]) == 1
        assert "no version '2'" in json.loads(capsys.readouterr().out)[0]["error"]["message"]
    else:  # Paddle Serving's requests carry no version: refused before anything is sent
        assert main([*args, "--model-version", "1"]) == 2
        assert "Open Inference Protocol only" in capsys.readouterr().err
