"""`resnest bench`: load-test a running server (see client/bench.py for the engine)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from resnest_serving.client.bench import (
    DEFAULT_DURATION,
    BenchAborted,
    BenchConfig,
    default_metrics_url,
    run_repeats,
    run_sweep,
)
from resnest_serving.client.bench_results import ARRIVALS
from resnest_serving.client.compare import compare_reports, format_spread
from resnest_serving.client.credentials import add_credential_arguments, credentials_from_arguments
from resnest_serving.client.factory import PROTOCOLS, add_model_arguments
from resnest_serving.client.images import list_images
from resnest_serving.client.predict_cli import default_endpoint
from resnest_serving.client.report import format_report, format_sweep, plot_report, plot_sweep, write_json

log = logging.getLogger(__name__)


def default_images_dir() -> Path | None:
    """``$RESNEST_SHARED/data/images``, else ``../shared/data/images`` beside the repository, if present."""
    shared = os.environ.get("RESNEST_SHARED")
    root = Path(shared) if shared else Path(__file__).resolve().parent.parent.parent / "shared"
    folder = root / "data" / "images"
    return folder if folder.is_dir() else None


TIFF_SUFFIXES = (".tif", ".tiff")


def bench_images(folder: Path) -> list[Path]:
    """The folder's images the server accepts: TIFF files are left out with a warning (the server refuses
    TIFF, so every request drawing one would fail); a folder of TIFFs only is refused."""
    images = list_images(folder)
    tiffs = [p for p in images if p.suffix.lower() in TIFF_SUFFIXES]
    kept = [p for p in images if p.suffix.lower() not in TIFF_SUFFIXES]
    if tiffs and not kept:
        raise ValueError(f"{folder} holds only TIFF images, which the server refuses (JPEG, PNG, BMP and WebP "
                         "are accepted): convert them or give another --images folder")
    if tiffs:
        log.warning("skipping %d TIFF file(s) of %s (the server refuses TIFF): %s%s", len(tiffs), folder,
                    ", ".join(p.name for p in tiffs[:3]), ", ..." if len(tiffs) > 3 else "")
    return kept


def sibling_metrics_url(protocol: str, endpoint: str, scheme: str) -> str | None:
    """For gRPC/bRPC on configs/config.yml's default port (9993, 9994) on loopback: the /metrics of that
    config's REST port (18080) on the same host, where our server serves it. None otherwise."""
    from resnest_serving.protocol.endpoints import is_loopback

    host, _, port = endpoint.rpartition(":")
    if protocol in ("http", "v2-http") or not is_loopback(host) or endpoint != default_endpoint(protocol):
        return None
    return f"{scheme}://{default_endpoint('http')}/metrics"


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--concurrency takes N or N1,N2,...; got {text!r}") from None
    if not levels or any(c < 1 for c in levels):
        raise argparse.ArgumentTypeError(f"concurrency levels must be >= 1, got {text!r}")
    return levels


def _rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rate takes R or R1,R2,...; got {text!r}") from None
    if not rates or any(not r > 0 for r in rates):
        raise argparse.ArgumentTypeError(f"rates must be > 0 requests/s, got {text!r}")
    return rates


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="load-test a running server (closed or open loop, any protocol)",
        description="Load a running server with real images and report throughput, latency percentiles, "
                    "errors by kind and the server's own stage timings. Every answer is checked (err_no 0, "
                    "one well-formed result per image, stable top-1 per image). The run is always bounded "
                    f"(--duration, --requests; default {DEFAULT_DURATION:g} s). Only loopback targets unless "
                    "--allow-remote. Exit status 1 if any measured request failed.")
    p.add_argument("--protocol", choices=PROTOCOLS, default="grpc",
                   help="front door to load (default grpc; v2-http, v2-grpc: the Open Inference Protocol)")
    p.add_argument("--endpoint", metavar="HOST:PORT",
                   help="server address (default 127.0.0.1 with configs/config.yml's port: grpc and v2-grpc 9993, "
                        "http and v2-http 18080, brpc 9994)")
    add_model_arguments(p)
    p.add_argument("--concurrency", type=_levels, default=[1], metavar="N[,N...]",
                   help="requests in flight (closed loop) or in-flight cap (open loop); a list such as "
                        "1,2,4,8,16 runs a sweep and reports the knee (default 1)")
    p.add_argument("--rate", type=_rates, metavar="R[,R...]",
                   help="open loop: offer R requests/s whatever the answers do (at most --concurrency in flight); "
                        "a list such as 5,10,20 runs a rate sweep and, with --p99-ms, reports the highest rate "
                        "meeting it")
    p.add_argument("--arrivals", choices=ARRIVALS, default="poisson",
                   help="open loop: poisson (exponential gaps, as MLPerf's Server scenario; default) or uniform "
                        "(one every 1/R s)")
    p.add_argument("--latency-bound-ms", type=float, metavar="MS",
                   help="also report the share of requests slower than MS (failed ones count as slower)")
    p.add_argument("--p99-ms", type=float, metavar="MS", help="rate sweep: the p99 response-time target")
    p.add_argument("--repeats", type=int, default=1, metavar="N",
                   help="measure each level N times in a row and report median and min–max (default 1)")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("A.json", "B.json"),
                   help="compare two --json reports (ratios B/A, within-noise verdicts) and exit; no load is sent")
    p.add_argument("--duration", type=float, metavar="S", help=f"seconds of load per level (default "
                   f"{DEFAULT_DURATION:g} unless --requests is given)")
    p.add_argument("--requests", type=int, metavar="N", help="requests per level (stops at whichever of "
                   "--duration/--requests comes first)")
    p.add_argument("--images-per-request", type=int, default=1, metavar="K", help="images per request (default 1)")
    p.add_argument("--images", type=Path, metavar="DIR",
                   help="folder of JPEG/PNG/BMP/WebP files to draw from (TIFF files are skipped: the server "
                        "refuses them; default ../shared/data/images if present)")
    p.add_argument("--warmup", type=int, default=5, metavar="N",
                   help="unmeasured requests before measuring (default 5; once before a sweep)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S", help="seconds per request (default 30)")
    p.add_argument("--metrics-url", metavar="URL",
                   help="Prometheus endpoint of the server, scraped before and after for stage timings "
                        "(default http://ENDPOINT/metrics with --protocol http or v2-http; with grpc, v2-grpc or "
                        "brpc on configs/config.yml's default port on loopback, that config's REST port "
                        "127.0.0.1:18080; else none)")
    p.add_argument("--no-answer-check", action="store_true",
                   help="do not count a changed top-1 for the same image as wrong_answer")
    p.add_argument("--knee-fraction", type=float, default=0.95, metavar="F",
                   help="sweep knee = lowest concurrency reaching F x the best images/s (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="seed for drawing images (default 0)")
    p.add_argument("--client-resize", type=int, metavar="N",
                   help="shrink images whose short side is at least 2N to a short side of N, once before the load "
                        "(the model's resize target, 256 for 224 models): what a client that resizes sends")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the full report (raw samples included)")
    p.add_argument("--plot", type=Path, metavar="FILE.png",
                   help="draw latency over time and a histogram (sweep: throughput/latency per level)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback endpoint or metrics URL")
    add_credential_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.compare:
        print(compare_reports(*args.compare))
        return 0
    if args.rate and len(args.rate) > 1 and len(args.concurrency) > 1:
        raise ValueError("sweep one axis at a time: a list for --rate or for --concurrency, not both")
    folder = args.images or default_images_dir()
    if folder is None:
        raise ValueError("no image folder: give --images DIR (../shared/data/images was not found)")
    endpoint = args.endpoint or default_endpoint(args.protocol)
    credentials = credentials_from_arguments(args)
    config = BenchConfig(
        protocol=args.protocol, endpoint=endpoint, images=bench_images(folder), service_name=args.service_name,
        model_version=args.model_version,
        concurrency=args.concurrency[0], rate=args.rate[0] if args.rate else None, arrivals=args.arrivals,
        latency_bound_ms=args.latency_bound_ms, duration=args.duration, requests=args.requests,
        images_per_request=args.images_per_request, warmup=args.warmup, timeout=args.timeout,
        metrics_url=(args.metrics_url or default_metrics_url(args.protocol, endpoint, credentials.scheme)
                     or sibling_metrics_url(args.protocol, endpoint, credentials.scheme)),
        allow_remote=args.allow_remote, check_answers=not args.no_answer_check, seed=args.seed,
        client_resize=args.client_resize,
        progress=not args.quiet and sys.stderr.isatty(), credentials=credentials)
    config.validate()
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ValueError("--plot needs matplotlib: pip install 'resnest-serving[plot]'") from None
    try:
        return _run(args, config)
    except BenchAborted as exc:
        log.error("%s", exc)
        return 1


def _run(args: argparse.Namespace, config: BenchConfig) -> int:
    axis, levels = (("rate", args.rate) if args.rate and len(args.rate) > 1 else
                    ("concurrency", args.concurrency) if len(args.concurrency) > 1 else (None, []))
    if axis is not None:
        sweep = asyncio.run(run_sweep(config, levels, args.knee_fraction, axis=axis, repeats=args.repeats,
                                      p99_target_ms=args.p99_ms))
        print(format_sweep(sweep))
        report_obj, errors = sweep, sum(sum(r.errors.values()) for _, r in sweep.levels)
        if args.plot is not None:
            print(f"plot: {plot_sweep(sweep, args.plot)}")
    else:
        run_ = asyncio.run(run_repeats(config, args.repeats))
        report = run_.median_report
        print(format_report(report))
        if args.repeats > 1:
            print("\n" + format_spread(run_))
        report_obj = run_ if args.repeats > 1 else report
        errors = sum(sum(r.errors.values()) for r in run_.reports)
        if args.plot is not None:
            print(f"plot: {plot_report(report, args.plot)}")
    if args.json is not None:
        print(f"report: {write_json(args.json, report_obj)}")
    if errors:
        log.warning("%d measured request(s) failed", errors)
    sys.stdout.flush()
    return 1 if errors else 0
