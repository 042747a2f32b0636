"""Our server and the real Paddle Serving 0.9 pipeline side by side, in one run (issue #19's ratios): both up at
once on the same model files, and the load points (gRPC and HTTP at 1 and 4 clients) measured in interleaved
rounds (each round measures every point on both servers, which one goes first alternating between rounds), so
a shared machine's drift hits both alike. Per point: the median req/s and p50 of each server, and the median
(min–max) over the rounds of each round's ratio ours / Paddle Serving.

Paddle Serving runs in its own Python 3.9 venv (bench/paddle_serving/setup.sh): our PaddleClas-style web service
(bench/paddle_serving/web_service.py) in its best CPU configuration. Paddle 2.x cannot read Paddle 3's `.json`
model, so the model is written once as a legacy `.pdmodel` by Paddle 2.x (bench/paddle_serving/legacy_model.py)
and our exporter bundles that same file for our server: both serve the same weights. Before the load, each
shared image is classified by both servers and their top-1 compared.

    python -m bench.served --paddle-serving /work/ps39/bin/python --arch ResNeSt_tiny --configs auto:fp32
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.load_points import measure_point, start_server

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent / "paddle_serving"
POINTS = [("grpc", 1), ("grpc", 4), ("http", 1), ("http", 4)]
THEIRS = "Paddle Serving 0.9"
SETUP_HINT = "create it with bench/paddle_serving/setup.sh {venv} (Python 3.9, Paddle 2.6, paddle-serving-server 0.9)"


class PaddleServingMissing(RuntimeError):
    """The Python 3.9 interpreter with Paddle Serving is absent or incomplete."""


def check_python(python: Path) -> Path:
    """`python` if it can import Paddle Serving's pipeline, else PaddleServingMissing saying how to create it."""
    venv = python.parent.parent if python.parent.name == "bin" else python.parent
    hint = SETUP_HINT.format(venv=venv)
    if not python.is_file():
        raise PaddleServingMissing(f"--paddle-serving {python}: no such interpreter; {hint}")
    with tempfile.TemporaryDirectory() as scratch:  # importing Paddle Serving writes PipelineServingLogs/ here
        probe = subprocess.run([str(python), "-c", "import paddle, paddle_serving_server.web_service, "
                                "paddle_serving_app.reader"], capture_output=True, text=True, timeout=120, cwd=scratch)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise PaddleServingMissing(f"--paddle-serving {python} cannot import Paddle Serving's pipeline ({last}); {hint}")
    return python


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def legacy_bundle(python: Path, arch: str, out: Path, label_file: Path | None) -> Path:
    """A serving_server folder holding a legacy `.pdmodel` written by Paddle 2.x (random weights, seed 0), bundled
    by our exporter (prototxts, resnest_meta.json, ONNX): the same files for both servers. Made once, reused."""
    from resnest_serving.export.exporter import ExportOptions, export

    target = out / f"{arch}_legacy"
    server_dir = target / "serving_server"
    if (server_dir / "resnest_meta.json").is_file():
        return server_dir
    legacy = out / f"{arch}_pdmodel"
    subprocess.run([str(python), str(HERE / "legacy_model.py"), "--arch", arch, "--out", str(legacy)], check=True)
    export(ExportOptions(arch=arch, out=target, checkpoint=legacy, label_file=label_file, force=True))
    return server_dir


class PaddleServingServer:
    """bench/paddle_serving/web_service.py as a child process (its own process group: its grpc-gateway child
    goes with it), with what bench/load_points.measure_point needs: `ports`, `proc`, `url()`, `stop()`."""

    def __init__(self, python: Path, model_dir: Path, threads: int, workdir: Path, timeout: float = 300.0) -> None:
        from resnest_serving.protocol.bundle import ModelBundle

        meta = ModelBundle.load(model_dir).meta
        self.ports = {"grpc": free_port(), "http": free_port()}
        workdir.mkdir(parents=True, exist_ok=True)  # Paddle Serving writes its logs into the working folder
        args = [str(python), str(HERE / "web_service.py"), "--model-dir", str(model_dir.resolve()),
                "--rpc-port", str(self.ports["grpc"]), "--http-port", str(self.ports["http"]),
                "--thread-num", str(threads), "--resize-short", str(meta.resize_short),
                "--crop-size", str(meta.crop_size)]
        if meta.label_file:
            args += ["--label-file", str((model_dir / meta.label_file).resolve())]
        self.log_path = workdir / "web_service.log"
        with self.log_path.open("w") as log_file:
            self.proc = subprocess.Popen(args, cwd=workdir, stdout=log_file, stderr=subprocess.STDOUT,
                                         start_new_session=True, env={**os.environ, "no_proxy": "*"})
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        """Until the HTTP door (grpc-gateway, which forwards to the gRPC door) answers with an err_no (the probe's
        empty image is refused: the whole chain is up)."""
        import requests

        deadline = time.monotonic() + timeout
        body = json.dumps({"key": ["probe"], "value": [""]})
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Paddle Serving did not start (exit code {self.proc.returncode}); its log, "
                                   f"{self.log_path}:\n" + self.log_path.read_text()[-3000:])
            try:
                if "err_no" in requests.post(self.url("/imagenet/prediction"), data=body, timeout=5).json():
                    return
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.5)

    def url(self, path: str = "") -> str | None:
        """The HTTP door's URL for `path`; None for /metrics, which Paddle Serving lacks (no scrape attempted)."""
        return None if path == "/metrics" else f"http://127.0.0.1:{self.ports['http']}{path}"

    def stop(self) -> None:
        """SIGTERM to the whole process group (also when the main process is gone: its grpc-gateway child
        outlives it), SIGKILL after 20 s."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass


def compare_top1(servers: dict, image_paths: list[Path]) -> dict:
    """Each image classified by every server over gRPC: {image name: {server: (label, prob)}}."""
    from resnest_serving.client.factory import connect

    answers: dict = {path.name: {} for path in image_paths}
    for name, server in servers.items():
        with connect("grpc", f"127.0.0.1:{server.ports['grpc']}") as client:
            for path in image_paths:
                (result,) = client.classify(path)
                answers[path.name][name] = (result.label, result.prob)
    return answers


def top1_lines(answers: dict) -> list[str]:
    """One line saying whether every image got the same top-1 from every server, and the largest prob gap."""
    same = [len({label for label, _ in by_server.values()}) == 1 for by_server in answers.values()]
    gap = max((max(p for _, p in s.values()) - min(p for _, p in s.values()) for s in answers.values()), default=0.0)
    differ = [image for image, ok in zip(answers, same, strict=True) if not ok]
    return [f"top-1 on the {len(answers)} shared images: {'the same on every server' if all(same) else 'DIFFERENT'}"
            f" (max |Δprob| {gap:.2g})" + (f"; differs on {', '.join(differ)}" if differ else "")]


def run_rounds(servers: dict, image_paths: list[Path], args: argparse.Namespace) -> dict:
    """{(protocol, concurrency): {server name: [summary per round]}} over args.repeats rounds, the servers'
    order reversed every other round, after one unrecorded second of every point on every server."""
    names = list(servers)
    warm = argparse.Namespace(**{**vars(args), "seconds": 1.0, "flamegraph": None})
    for name in names:  # unrecorded: the first requests at each concurrency build oneDNN caches and connections
        for protocol, concurrency in POINTS:
            measure_point(servers[name], protocol, concurrency, image_paths, warm, "warm-up", repeats=1)
    rounds: dict = {point: {name: [] for name in names} for point in POINTS}
    for r in range(args.repeats):
        order = names if r % 2 == 0 else names[::-1]
        for protocol, concurrency in POINTS:
            for name in order:
                tag = name.split()[0].lower()
                rounds[(protocol, concurrency)][name].append(measure_point(
                    servers[name], protocol, concurrency, image_paths, args,
                    f"vs_{tag}_{protocol}_c{concurrency}_round{r}", repeats=1))
    return rounds


def ratio_table(rounds: dict, theirs: str = THEIRS) -> list[str]:
    """Markdown: per point and server the median req/s and p50 over the rounds, CPU per request, the answers
    that failed the load generator's check out of all sent, and for each other server the median (min–max) of each round's req/s ratio to `theirs`."""
    lines = ["| point | server | req/s | p50 ms | CPU ms/request | failed/checked answers | × Paddle Serving (min–max) |",
             "|---|---|---|---|---|---|---|"]
    for (protocol, concurrency), by_server in rounds.items():
        base = by_server[theirs]
        for name, runs in by_server.items():
            rps = statistics.median(s["qps"] for s in runs)
            p50 = statistics.median(s["latency_ms"]["p50"] for s in runs)
            cpu = statistics.median(sum(s["cpu_ms_per_request"][k] for k in ("front door", "engine workers"))
                                    for s in runs) if all("cpu_ms_per_request" in s for s in runs) else None
            failed = f"{sum(s['errors'] for s in runs)}/{sum(s['requests'] for s in runs)}"
            ratio = "-"
            if name != theirs:
                ratios = [s["qps"] / b["qps"] for s, b in zip(runs, base, strict=True)]
                ratio = f"×{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})"
            lines.append(f"| {protocol} c{concurrency} | {name} | {rps:.1f} | {p50:.1f} | "
                         f"{'-' if cpu is None else f'{cpu:.1f}'} | {failed} | {ratio} |")
    rounds_n = len(next(iter(next(iter(rounds.values())).values()))) if rounds else 0
    return lines + ["", f"medians over {rounds_n} interleaved rounds; × = median of each round's req/s ratio to "
                        f"{theirs} (min–max over the rounds); CPU = all the server's processes, per request "
                        "(/proc CPU time); every answer is checked (err_no 0, one result per image, the same top-1 for the same image)"]


def vs_main(args: argparse.Namespace, image_dir: Path, fingerprint: dict) -> int:
    """--paddle-serving: the first --configs entry of our server against Paddle Serving, one table."""
    from resnest_serving.client.images import list_images
    from resnest_serving.client.report import strict_json
    from resnest_serving.protocol.bundle import ModelBundle

    try:
        python = check_python(args.paddle_serving)
    except PaddleServingMissing as exc:
        log.error("%s", exc)
        return 2
    spec = args.configs[0]
    engine, _, precision = spec.partition(":")
    if args.model_dir is not None:
        model_dir = args.model_dir
    else:
        labels = args.shared / "data" / "imagenet1k_label_list.txt"
        from resnest_serving.export.specs import arch_spec

        model_dir = legacy_bundle(python, args.arch, args.out,
                                  labels if arch_spec(args.arch).class_num == 1000 and labels.is_file() else None)
    bundle = ModelBundle.load(model_dir)
    if bundle.model_file.suffix != ".pdmodel":
        log.error("%s holds %s: Paddle Serving 0.9 (Paddle 2.x) reads only legacy .pdmodel files; leave out "
                  "--model-dir to have one written", model_dir, bundle.model_file.name)
        return 2
    image_paths = list_images(image_dir)
    ours = f"ours ({spec})"
    servers: dict = {}
    try:
        servers[ours] = start_server(model_dir, engine, precision or "fp32", args, args.out, "_vs_ps")
        servers[THEIRS] = PaddleServingServer(python, model_dir, args.threads, args.out / "paddle_serving")
        answers = compare_top1(servers, image_paths)
        rounds = run_rounds(servers, image_paths, args)
    finally:
        for server in servers.values():
            server.stop()
    out = [f"model {bundle.meta.arch or model_dir} ({bundle.model_file.name}, written by Paddle 2.x), input "
           f"{bundle.meta.crop_size}, {args.threads} math threads each; ours: {spec}, batch_size {args.batch_size}, "
           f"auto_batching_timeout {args.batch_timeout_ms} ms; {THEIRS}: thread op, ir_optim, oneDNN, local "
           f"predictor; {len(image_paths)} real images, {args.seconds:g} s per point", "",
           *top1_lines(answers), "", *ratio_table(rounds)]
    sys.stdout.write("\n".join(out) + "\n")
    if args.json:
        args.json.write_text(json.dumps(strict_json({
            "fingerprint": fingerprint, "model": str(model_dir), "config": spec, "top1": answers,
            "points": [{"server": name, "protocol": p, "concurrency": c, "rounds": runs}
                       for (p, c), by_server in rounds.items() for name, runs in by_server.items()]}), indent=1))
    return 0
