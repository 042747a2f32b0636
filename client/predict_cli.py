"""`resnest predict`: classify image files with a running server over gRPC, REST, bRPC or the Open Inference
Protocol; or, with `--model-dir`, in this process through a classifier the root CLI hands in (the client shares only
`protocol/` with the server side, so it never imports the pipeline itself)."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path

from resnest_serving.client.credentials import add_credential_arguments, credentials_from_arguments
from resnest_serving.client.errors import ClientError
from resnest_serving.client.factory import PROTOCOLS, add_model_arguments, connect
from resnest_serving.client.images import list_images, shrink_image
from resnest_serving.client.text_table import text_table

DEFAULT_PORTS = {"grpc": 9993, "http": 18080, "brpc": 9994, "v2-http": 18080, "v2-grpc": 9993}
"""The ports of configs/config.yml (PaddleClas's rpc_port and http_port, and our brpc_port; the Open
Inference Protocol shares the HTTP and gRPC ports)."""


InProcess = Callable[[Path, list[Path], int], list[dict]]
"""(serving_server dir, image files, k) → one row per image, shaped like Classification.to_dict() plus "image"."""


def default_endpoint(protocol: str) -> str:
    return f"127.0.0.1:{DEFAULT_PORTS[protocol]}"


def add_parser(subparsers, in_process: InProcess | None = None) -> None:
    """The `predict` subcommand; with `in_process` it also offers `--model-dir DIR` and `--topk`."""
    p = subparsers.add_parser(
        "predict", help="classify images with a running server (gRPC, REST, bRPC or Open Inference Protocol)",
        description="Send images to a running server and print the top-1 (and top-k when the server "
                    "returns it) per image. Exit status 1 if any request failed.")
    p.add_argument("images", nargs="+", metavar="IMAGE", type=Path,
                   help="image files (JPEG, PNG, ...) or folders of them")
    p.add_argument("--protocol", choices=PROTOCOLS, default="grpc",
                   help="front door to use (default grpc; v2-http, v2-grpc: the Open Inference Protocol)")
    p.add_argument("--endpoint", metavar="HOST:PORT",
                   help="server address (default 127.0.0.1 with configs/config.yml's port for the protocol: "
                        "grpc and v2-grpc 9993, http and v2-http 18080, brpc 9994)")
    add_model_arguments(p)
    p.add_argument("--timeout", type=float, default=30.0, metavar="S", help="seconds per request (default 30)")
    p.add_argument("--batch", type=int, default=1, metavar="N", help="images per request (default 1)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--client-resize", type=int, metavar="N",
                   help="shrink images whose short side is at least 2N to a short side of N before sending (give the "
                        "model's resize target, 256 for 224 models): smaller uploads and server decodes; answers "
                        "within the tolerance README \"Big photos\" records")
    add_credential_arguments(p)
    if in_process is not None:
        p.add_argument("--model-dir", type=Path, metavar="DIR",
                       help="classify in-process with this exported serving_server dir instead of calling a "
                            "server (needs the server extra)")
        p.add_argument("--topk", type=int, default=5, help="classes per image with --model-dir (default 5)")
    p.set_defaults(func=functools.partial(run, in_process=in_process))


def _expand(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(list_images(path))
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"image not found: {path}")
    if not out:
        raise ValueError("no images to classify")
    return out


def run(args: argparse.Namespace, in_process: InProcess | None = None) -> int:
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    if args.client_resize is not None and args.client_resize < 1:
        raise ValueError(f"--client-resize must be >= 1, got {args.client_resize}")
    images = _expand(args.images)
    if in_process is not None and args.model_dir is not None:
        return _print(args, in_process(args.model_dir, images, args.topk), failed=0)
    endpoint = args.endpoint or default_endpoint(args.protocol)
    rows: list[dict] = []
    failed = 0
    with connect(args.protocol, endpoint, service_name=args.service_name, model_version=args.model_version,
                 timeout=args.timeout, credentials=credentials_from_arguments(args)) as client:
        for i in range(0, len(images), args.batch):
            chunk = images[i:i + args.batch]
            try:
                results = client.classify([shrink_image(p.read_bytes(), args.client_resize) if args.client_resize
                                           else p for p in chunk])
            except ClientError as exc:
                failed += 1
                error = {"kind": exc.kind, "message": str(exc)}
                rows.extend({"image": str(p), "error": error} for p in chunk)
                if not args.json:
                    print(f"error: {', '.join(p.name for p in chunk)}: {exc}", file=sys.stderr)
                continue
            rows.extend({"image": str(p), **r.to_dict()} for p, r in zip(chunk, results, strict=True))
    return _print(args, rows, failed)


def _print(args: argparse.Namespace, rows: list[dict], failed: int) -> int:
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        ok = [r for r in rows if "error" not in r]
        if ok or not failed:  # when every image failed, stderr said why: no "(no results)" beside it
            print(format_table(ok))
    return 1 if failed else 0


def format_table(rows: list[dict]) -> str:
    """image | top-1 label | prob | top-k ("label score; ...") when the server sent more than one."""
    if not rows:
        return "(no results)"
    with_topk = any(len(r["labels"]) > 1 for r in rows)
    headers = ["image", "label", "prob"] + (["top-k"] if with_topk else [])
    table = []
    for r in rows:
        line = [Path(r["image"]).name, r["label"], f"{r['prob']:.4f}"]
        if with_topk:
            line.append("; ".join(f"{name} {score:.4f}" for name, score in zip(r["labels"], r["scores"],
                                                                                 strict=True)))
        table.append(line)
    return text_table(headers, table)
