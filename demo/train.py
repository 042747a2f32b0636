"""Train the demo model: ResNeSt_tiny on scikit-learn's 8x8 handwritten digits (1797 images, 10 classes).

    python -m resnest_serving.demo.train            # writes demo/resnest_digits.pdparams, heldout_digits.npz, demo_model.json

Every image goes through the serving path: `digits.digit_to_png` → `cv2.imdecode` → `Preprocessor.from_bgr`
(resize short 72, crop 64), so the held-out accuracy measured here is what the server gives on the same PNGs.
Augmentation (training only): random whole-pixel shifts of the 80x80 image, up to `--shift` px each way,
filled with white, applied before the PNG encode. The held-out split (20 %, stratified, seeded) is never
augmented and never used to pick a checkpoint: the last epoch's weights are saved.

Needs scikit-learn (training only; the project does not depend on it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import platform
import random
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import paddle
import paddle.nn.functional as F

from resnest_serving.demo.digits import (
    ARCH,
    CHECKPOINT_PATH,
    HELDOUT_PATH,
    META_PATH,
    PAPER,
    decode_png,
    digit_to_bgr,
    encode_png,
    load_heldout,
    preprocess_pngs,
)
from resnest_serving.export.resnest import ResNeSt, build_model
from resnest_serving.pipeline.preprocess import Preprocessor, PreprocessSpec

log = logging.getLogger("demo.train")


def shift_image(img: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Translate by whole pixels, filling the uncovered border with paper white."""
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(PAPER, PAPER, PAPER))


def training_batch(images: np.ndarray, rng: np.random.Generator, shift: int, pre: Preprocessor) -> np.ndarray:
    """8x8 digits → augmented PNGs → server decode + preprocessing → NCHW float32."""
    out = []
    for i, digit in enumerate(images):
        bgr = digit_to_bgr(digit)
        if shift:
            dx, dy = rng.integers(-shift, shift + 1, size=2)
            bgr = shift_image(bgr, int(dx), int(dy))
        out.append(pre.from_bgr(f"train{i}", decode_png(encode_png(bgr))))
    return np.stack(out)


def evaluate(model: ResNeSt, x: np.ndarray, y: np.ndarray, batch: int = 256) -> float:
    """Top-1 accuracy in eval mode (BatchNorm running statistics), as exported."""
    model.eval()
    preds = []
    with paddle.no_grad():
        for s in range(0, len(x), batch):
            preds.append(model(paddle.to_tensor(x[s:s + batch])).numpy().argmax(axis=1))
    return float((np.concatenate(preds) == y).mean()) if len(y) else 0.0


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m resnest_serving.demo.train", description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (AdamW, cosine decay)")
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--shift", type=int, default=4, help="max random shift in px of the 80x80 image (0: off)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heldout-fraction", type=float, default=0.2)
    ap.add_argument("--out-dir", type=Path, default=CHECKPOINT_PATH.parent,
                    help="where the checkpoint, held-out set and demo_model.json go (default: demo/)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True)

    import sklearn
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    random.seed(args.seed)
    np.random.seed(args.seed)
    paddle.seed(args.seed)
    rng = np.random.default_rng(args.seed)

    digits = load_digits()
    images = digits.images.astype(np.uint8)  # values 0..16, exact
    labels = digits.target.astype(np.int64)
    idx_train, idx_held = train_test_split(np.arange(len(labels)), test_size=args.heldout_fraction,
                                           stratify=labels, random_state=args.seed)
    idx_held = np.sort(idx_held)
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    held_path = out_dir / HELDOUT_PATH.name
    np.savez_compressed(held_path, images=images[idx_held], labels=labels[idx_held].astype(np.uint8),
                        indices=idx_held.astype(np.int16))
    log.info("split: %d train, %d held out (stratified, seed %d) → %s",
             len(idx_train), len(idx_held), args.seed, held_path)

    model = build_model(ARCH)
    spec = model.spec
    pre = Preprocessor(PreprocessSpec(resize_short=spec.resize_short, crop_size=spec.crop_size))
    held_pngs, held_y = load_heldout(held_path)  # the demo's exact bytes
    held_x = preprocess_pngs(held_pngs, spec.resize_short, spec.crop_size)
    train_plain_x = training_batch(images[idx_train], rng, 0, pre)
    train_y = labels[idx_train]

    steps_per_epoch = -(-len(idx_train) // args.batch_size)
    sched = paddle.optimizer.lr.CosineAnnealingDecay(args.lr, T_max=args.epochs * steps_per_epoch)
    opt = paddle.optimizer.AdamW(sched, parameters=model.parameters(), weight_decay=args.weight_decay)

    t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(idx_train))
        x_all = training_batch(images[idx_train][order], rng, args.shift, pre)
        y_all = train_y[order]
        model.train()
        loss_sum, correct = 0.0, 0
        for s in range(0, len(order), args.batch_size):
            x = paddle.to_tensor(x_all[s:s + args.batch_size])
            y = paddle.to_tensor(y_all[s:s + args.batch_size])
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            opt.step()
            opt.clear_grad()
            sched.step()
            loss_sum += float(loss) * len(y)
            correct += int((logits.argmax(axis=1) == y).astype("int64").sum())
        held_acc = evaluate(model, held_x, held_y)
        log.info("epoch %2d/%d  loss %.4f  train acc (augmented, train mode) %.4f  held-out acc %.4f  %.0fs",
                 epoch, args.epochs, loss_sum / len(order), correct / len(order), held_acc,
                 time.perf_counter() - t0)
    train_time = time.perf_counter() - t0

    ckpt = out_dir / CHECKPOINT_PATH.name
    model.eval()
    paddle.save(model.state_dict(), str(ckpt))
    # Re-measure from the saved file, the way the tests do.
    fresh = build_model(ARCH)
    fresh.set_state_dict(paddle.load(str(ckpt)))
    held_acc = evaluate(fresh, held_x, held_y)
    train_acc = evaluate(fresh, train_plain_x, train_y)
    log.info("saved %s (%d bytes): train acc %.4f, held-out acc %.4f, %.0f s",
             ckpt, ckpt.stat().st_size, train_acc, held_acc, train_time)

    meta = {
        "arch": ARCH,
        "arch_spec": spec.to_dict(),
        "dataset": "sklearn.datasets.load_digits (UCI optical recognition of handwritten digits, test part)",
        "rendering": "255 - round(v*255/16), 1-cell white margin, 8x cv2.INTER_NEAREST → 80x80 BGR PNG",
        "preprocessing": {"resize_short": spec.resize_short, "crop_size": spec.crop_size,
                          "path": "PNG → cv2.imdecode → pipeline.preprocess.Preprocessor.from_bgr"},
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": {"name": "AdamW", "lr": args.lr, "schedule": "cosine, per step",
                      "weight_decay": args.weight_decay},
        "augmentation": {"random_shift_px": args.shift},
        "split": {"train": int(len(idx_train)), "heldout": int(len(idx_held)),
                  "heldout_fraction": args.heldout_fraction, "stratified": True},
        "train_accuracy": round(train_acc, 6),
        "heldout_accuracy": round(held_acc, 6),
        "heldout_correct": int(round(held_acc * len(held_y))),
        "training_time_s": round(train_time, 1),
        "checkpoint": ckpt.name,
        "checkpoint_bytes": ckpt.stat().st_size,
        "checkpoint_sha256": _sha256(ckpt),
        "heldout_file": held_path.name,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "-m", "resnest_serving.demo.train", *sys.argv[1:]]) if argv is None
        else " ".join(["python", "-m", "resnest_serving.demo.train", *argv]),
        "versions": {"python": platform.python_version(), "paddlepaddle": paddle.__version__,
                     "numpy": np.__version__, "opencv": cv2.__version__, "scikit-learn": sklearn.__version__},
        "host": f"{platform.machine()} CPU, {paddle.get_device()}",
    }
    meta_path = out_dir / META_PATH.name
    meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    log.info("wrote %s", meta_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
