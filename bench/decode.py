"""Big photos three ways, side by side in one run: the server's full decode, libjpeg's DCT-scaled decode
(`op.jpeg_dct_scaling`), and a client that shrinks the photo to the model's resize target before sending
(`client.images.shrink_image`, `--client-resize`).

    python -m bench.decode [--repeats 5] [--json OUT]

Speed: the shared images enlarged to phone-photo size (4032x3024, JPEG quality 92), each decoded and
preprocessed to the 224 input each way, alternating (the client path: the server's part, plus the client's
shrinking apart); prints ms/image and the ratios. Effect: the mean |difference| of the normalized model input
from the full decode's, and, where top-1 agreement means something, the trained demo model's answers on its
360 held-out digits enlarged 8x to 640x640 JPEGs (top-1 agreement with the full decode, max and mean |Δprob|
of the top-1 class, and each path's accuracy against the labels). Not a test: read the ratios; the machines are shared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import simplejpeg

from resnest_serving.client.images import shrink_image
from resnest_serving.pipeline.preprocess import Preprocessor, PreprocessSpec

PHOTO_SIZE = (4032, 3024)


def to_jpeg(bgr: np.ndarray, size: tuple[int, int], quality: int) -> bytes:
    """`bgr` resized (bicubic) to `size` = (width, height) and JPEG-encoded."""
    big = cv2.resize(bgr, size, interpolation=cv2.INTER_CUBIC)
    return simplejpeg.encode_jpeg(np.ascontiguousarray(big), quality=quality, colorspace="BGR")


def pair(resize_short: int, crop: int) -> tuple[Preprocessor, Preprocessor]:
    """(full decode, DCT-scaled decode) preprocessors for one input size."""
    return (Preprocessor(PreprocessSpec(resize_short, crop)),
            Preprocessor(PreprocessSpec(resize_short, crop, jpeg_dct_scaling=True)))


def photo_rows(shared: Path, repeats: int) -> dict:
    full, dct = pair(256, 224)
    photos, shrunk = {}, {}
    for path in sorted((shared / "data" / "images").glob("*.*")):
        bgr = cv2.imread(str(path))
        w, h = PHOTO_SIZE if bgr.shape[1] >= bgr.shape[0] else PHOTO_SIZE[::-1]
        photos[path.name] = to_jpeg(bgr, (w, h), 92)
    times: dict[str, list[float]] = {"full": [], "dct": [], "client_shrink": [], "server_after_shrink": []}
    for _ in range(repeats):
        for name, data in photos.items():
            for label, run in (("full", lambda d, n=name: full.from_bytes(n, d)),
                               ("dct", lambda d, n=name: dct.from_bytes(n, d)),
                               ("client_shrink", lambda d, n=name: shrunk.__setitem__(n, shrink_image(d, 256)))):
                start = time.perf_counter()
                run(data)
                times[label].append(time.perf_counter() - start)
            start = time.perf_counter()
            full.from_bytes(name, shrunk[name])
            times["server_after_shrink"].append(time.perf_counter() - start)
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    diffs = {"dct": [], "client_resize": []}
    for name, data in photos.items():
        ref = full.from_bytes(name, data)
        diffs["dct"].append(float(np.abs(ref - dct.from_bytes(name, data)).mean()))
        diffs["client_resize"].append(float(np.abs(ref - full.from_bytes(name, shrunk[name])).mean()))
    return {"images": len(photos), "size": f"{PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}", "server_ms": ms,
            "speedup_dct": ms["full"] / ms["dct"], "speedup_server_after_shrink": ms["full"] / ms["server_after_shrink"],
            "bytes_full": statistics.mean(len(d) for d in photos.values()),
            "bytes_shrunk": statistics.mean(len(d) for d in shrunk.values()),
            "mean_abs_input_diff": {k: statistics.mean(v) for k, v in diffs.items()}}


def digit_rows(model_dir: Path) -> dict:
    """The three paths through the trained demo model (`model_dir`: its export) on the held-out digits
    enlarged 8x to JPEGs: top-1 agreement with the full decode, |Δprob| of its top-1 class, accuracy."""
    from resnest_serving.demo.digits import digit_to_bgr, load_heldout_arrays
    from resnest_serving.pipeline.local import LocalClassifier

    model = LocalClassifier(model_dir, engine="paddle")
    meta = model.bundle.meta
    full, dct = pair(meta.resize_short, meta.crop_size)
    digits, labels = load_heldout_arrays()
    jpegs = [to_jpeg(digit_to_bgr(d), (640, 640), 90) for d in digits]

    def probs(pre: Preprocessor, shrink: bool = False) -> np.ndarray:
        return model.probabilities(np.stack([pre.from_bytes(f"digit{i}", shrink_image(j, meta.resize_short) if shrink
                                                            else j) for i, j in enumerate(jpegs)]))

    a = probs(full)
    top = a.argmax(1)
    out = {"images": len(jpegs), "size": "640x640", "accuracy_full": float(np.mean(top == labels))}
    for label, b in (("dct", probs(dct)), ("client_resize", probs(full, shrink=True))):
        delta = np.abs(a[np.arange(len(top)), top] - b[np.arange(len(top)), top])
        out[label] = {"top1_agreement": float(np.mean(top == b.argmax(1))), "max_abs_dprob": float(delta.max()),
                      "mean_abs_dprob": float(delta.mean()), "accuracy": float(np.mean(b.argmax(1) == labels))}
    return out


def demo_export(out: Path) -> Path:
    """The trained demo model exported (fp32 only) to `out`, once."""
    from resnest_serving.demo.digits import ARCH, CHECKPOINT_PATH, LABELS_PATH
    from resnest_serving.export.exporter import ExportOptions, export

    if not (out / "serving_server").is_dir():
        export(ExportOptions(arch=ARCH, out=out, checkpoint=CHECKPOINT_PATH, label_file=LABELS_PATH, onnx=False))
    return out / "serving_server"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench_out"), help="where the demo model is exported")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = {"photos": photo_rows(args.shared, args.repeats), "digits": digit_rows(demo_export(args.out / "demo-fp32"))}
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
