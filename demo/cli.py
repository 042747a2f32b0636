"""`resnest demo` (`make demo`): the whole system on a really trained model, in a few minutes.

1. exports the committed demo checkpoint (ResNeSt_tiny trained on scikit-learn's handwritten digits)
   with our own export path;
2. measures its held-out accuracy in-process;
3. starts the pipeline server (gRPC, REST, bRPC) as a child process;
4. classifies the held-out digits over each protocol and prints predictions next to the truth and the
   accuracy per protocol (they must equal the in-process accuracy);
5. runs a short `resnest bench` against it and stops the server cleanly.

`--model-dir` points it at your own exported serving_server (e.g. a ResNeSt50): it then classifies the
images in ../shared/data/images (or --images) instead of the digits, and reports no accuracy.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

PROTOCOLS = ("grpc", "http", "brpc")
BATCH = 8  # images per request
CALIBRATION_DIGITS = 64  # held-out digits used to calibrate int8 (the other 296 check it)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="export, serve and call the trained demo model over every protocol",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="work directory (default demo_out)")
    p.add_argument("--model-dir", type=Path, help="serve this exported serving_server instead of the demo model")
    p.add_argument("--images", type=Path, help="images to classify with --model-dir (default: shared images)")
    p.add_argument("--shared", type=Path, default=Path("../shared"), help="the shared data folder")
    p.add_argument("--bench-seconds", type=float, default=10.0, help="length of the load test (default 10)")
    p.add_argument("--show", type=int, default=8, help="predictions to print per protocol (default 8)")
    p.set_defaults(func=run)


def say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    from resnest_serving.pipeline.local import LocalClassifier
    from resnest_serving.serving.launcher import ServerProcess, write_config

    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir, images, truth = prepare(args)
    say(f"== model: {model_dir}")
    local = LocalClassifier(model_dir)
    say(f"== in-process engine: {local.report.summary}")
    local_preds = [p.class_ids[0] for p in local.classify_bytes(images, k=1)]
    local_acc = accuracy(local_preds, truth)
    if local_acc is not None:
        say(f"== in-process held-out accuracy: {local_acc:.2%} on {len(images)} images")

    config = write_config(args.out / "demo_config.yml", model_dir,
                          op={"batch_size": BATCH, "auto_batching_timeout": 5, "topk": 3})
    say("== starting the server (gRPC, REST, bRPC on free loopback ports)")
    server = ServerProcess(config)
    failures = []
    try:
        doors = " ".join(f"{door}=127.0.0.1:{port}" for door, port in server.ports.items())
        say(f"   service {server.info['service']!r} listening {doors} (pid {server.info['pid']})")
        for protocol in PROTOCOLS:
            preds, labels, seconds = classify_over(protocol, server.ports[protocol], images)
            acc = accuracy(preds, truth)
            show_predictions(protocol, labels, preds, truth, local.bundle.labels, args.show)
            summary = f"{len(images)} images in {seconds:.2f} s"
            if acc is not None:
                summary = f"accuracy {acc:.2%} ({summary})"
                if preds != local_preds:
                    failures.append(f"{protocol}: answers differ from the in-process model")
            say(f"   {protocol}: {summary}")
        bench_dir = write_bench_images(args.out / "bench_images", images)
        run_load_test(server, bench_dir, args.bench_seconds)
    finally:
        code = server.stop()
    say(f"== server stopped (exit code {code}); demo took {time.perf_counter() - started:.0f} s")
    if code != 0:
        failures.append(f"server exit code {code}")
    for failure in failures:
        say(f"FAILED: {failure}")
    return 1 if failures else 0


def prepare(args: argparse.Namespace) -> tuple[Path, list[bytes], list[int] | None]:
    """The model to serve and the images to send (with their true classes when known)."""
    if args.model_dir is not None:
        folder = args.images or args.shared / "data" / "images"
        from resnest_serving.client.images import list_images

        paths = list_images(folder)
        if not paths:
            raise ValueError(f"no images in {folder}")
        return args.model_dir, [p.read_bytes() for p in paths], None
    from resnest_serving.demo.digits import ARCH, CHECKPOINT_PATH, LABELS_PATH, load_heldout
    from resnest_serving.export.exporter import ExportOptions
    from resnest_serving.export_command import export_model
    from resnest_serving.pipeline.accuracy import describe_check

    say(f"== exporting the demo checkpoint {CHECKPOINT_PATH.name} ({ARCH}) with resnest export, plus an int8 "
        f"model calibrated on {CALIBRATION_DIGITS} held-out digits")
    pngs, labels = load_heldout()
    named = {f"digit{i:03d}.png": png for i, png in enumerate(pngs)}
    names = list(named)
    shared_images = args.shared / "data" / "images"
    checks = {"digits-heldout": {n: named[n] for n in names[CALIBRATION_DIGITS:]}}
    if shared_images.is_dir():
        checks["shared-images"] = {p.name: p.read_bytes() for p in sorted(shared_images.iterdir()) if p.is_file()}
    result = export_model(ExportOptions(arch=ARCH, out=args.out / "bundle", checkpoint=CHECKPOINT_PATH,
                                        label_file=LABELS_PATH, force=True, int8=True,
                                        calibration_images={n: named[n] for n in names[:CALIBRATION_DIGITS]},
                                        check_images=checks))
    say("== what reduced precision costs on this CPU (each engine against itself at fp32; the held-out digits "
        "exclude the calibration ones)")
    for precision, entry in result.meta.precision_checks.items():
        for kind, check in entry["engines"].items():
            say("   " + describe_check(precision, kind, check))
    return result.server_dir, pngs, [int(x) for x in labels]


def classify_over(protocol: str, port: int, images: list[bytes]) -> tuple[list[int], list[str], float]:
    """Top-1 class ids and labels of every image, BATCH images per request."""
    from resnest_serving.client import connect

    preds, labels = [], []
    started = time.perf_counter()
    with connect(protocol, f"127.0.0.1:{port}", timeout=60) as client:
        for i in range(0, len(images), BATCH):
            for answer in client.classify(images[i:i + BATCH]):
                preds.append(answer.class_id)
                labels.append(answer.label)
    return preds, labels, time.perf_counter() - started


def accuracy(preds: list[int], truth: list[int] | None) -> float | None:
    if truth is None:
        return None
    return sum(p == t for p, t in zip(preds, truth, strict=True)) / len(truth)


def show_predictions(protocol: str, labels: list[str], preds: list[int], truth: list[int] | None,
                     names: tuple[str, ...] | None, count: int) -> None:
    say(f"-- {protocol}: first {min(count, len(labels))} answers")
    for i, label in enumerate(labels[:count]):
        if truth is None:
            say(f"   image {i}: {label}")
        else:
            want = names[truth[i]] if names else str(truth[i])
            mark = "ok" if preds[i] == truth[i] else "WRONG"
            say(f"   image {i}: predicted {label:<6} truth {want:<6} {mark}")


def write_bench_images(folder: Path, images: list[bytes]) -> Path:
    """Write up to 32 of `images` as image_NNN.png/.jpg into `folder`, after removing the image_NNN files of an
    earlier run (a run on photos after one on digits must not load-test a mix of both)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("image_[0-9][0-9][0-9].*"):
        old.unlink()
    for i, data in enumerate(images[:32]):
        suffix = ".png" if data[:4] == b"\x89PNG" else ".jpg"
        (folder / f"image_{i:03d}{suffix}").write_bytes(data)
    return folder


def run_load_test(server, images: Path, seconds: float) -> None:
    from resnest_serving.client.bench import BenchConfig, run_bench
    from resnest_serving.client.report import format_report

    say(f"== load test: resnest bench --protocol grpc --concurrency 4 --duration {seconds:g}")
    config = BenchConfig(protocol="grpc", endpoint=f"127.0.0.1:{server.ports['grpc']}",
                         images=sorted(images.iterdir()), concurrency=4, duration=seconds, warmup=4,
                         metrics_url=server.url("/metrics"), progress=sys.stdout.isatty())
    report = asyncio.run(run_bench(config))
    say(format_report(report))
