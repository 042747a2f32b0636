"""The demo model: digit rendering round trip, the committed checkpoint and its recorded held-out accuracy."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from resnest_serving.demo.digits import (
    ARCH,
    CHECKPOINT_PATH,
    HELDOUT_PATH,
    IMAGE_SIZE,
    LABELS_PATH,
    META_PATH,
    decode_png,
    digit_to_bgr,
    digit_to_png,
    load_heldout,
    load_heldout_arrays,
    preprocess_pngs,
)


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads(META_PATH.read_text(encoding="utf-8"))


def _ramp() -> np.ndarray:
    return (np.arange(64).reshape(8, 8) % 17).astype(np.uint8)


def test_png_round_trip_is_lossless():
    digit = _ramp()
    png = digit_to_png(digit)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = decode_png(png)
    assert img.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, digit_to_bgr(digit))
    # cell (r, c) of the digit is the 8x8 block starting at ((r + 1) * 8, (c + 1) * 8); the margin is white
    assert img[8 * 3 + 5, 8 * 4 + 2, 0] == 255 - round(int(digit[2, 3]) * 255 / 16)
    assert (img[:8] == 255).all() and (img[:, -8:] == 255).all()
    x = preprocess_pngs([png])
    assert x.shape == (1, 3, 64, 64) and x.dtype == np.float32


@pytest.mark.parametrize("bad", [np.zeros((8, 9)), np.full((8, 8), 17), np.full((8, 8), -1)])
def test_digit_to_png_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        digit_to_png(bad)


def test_demo_digits_does_not_import_sklearn():
    code = "import sys, demo.digits; sys.exit('sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=CHECKPOINT_PATH.parent.parent).returncode == 0


def test_heldout_set_and_labels(meta):
    images, labels = load_heldout_arrays()
    assert images.dtype == np.uint8 and images.shape == (meta["split"]["heldout"], 8, 8)
    assert images.max() <= 16
    assert sorted(set(labels.tolist())) == list(range(10))  # stratified: every class present
    assert np.bincount(labels).min() >= 30
    assert HELDOUT_PATH.stat().st_size < 64 * 1024
    lines = LABELS_PATH.read_text(encoding="utf-8").splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == [str(i) for i in range(10)]


def test_checkpoint_matches_tiny_arch(meta):
    import paddle

    from resnest_serving.export.resnest import build_model

    assert CHECKPOINT_PATH.stat().st_size < 4 * 1024 * 1024
    assert hashlib.sha256(CHECKPOINT_PATH.read_bytes()).hexdigest() == meta["checkpoint_sha256"]
    state = paddle.load(str(CHECKPOINT_PATH))
    model = build_model(ARCH)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    # every recorded hyper-parameter still holds (fields added to ArchSpec later keep defaults that do not
    # change this net: e.g. shortcut_ceil_mode is a no-op at the 64-pixel input)
    spec = json.loads(json.dumps(model.spec.to_dict()))
    assert meta["arch"] == ARCH and {k: spec[k] for k in meta["arch_spec"]} == meta["arch_spec"]


def test_heldout_accuracy_matches_recorded(meta):
    import paddle

    from resnest_serving.export.resnest import build_model

    model = build_model(ARCH)  # eval mode
    missing, unexpected = model.set_state_dict(paddle.load(str(CHECKPOINT_PATH)))
    assert not missing and not unexpected
    pngs, labels = load_heldout()
    x = preprocess_pngs(pngs, model.spec.resize_short, model.spec.crop_size)
    with paddle.no_grad():
        pred = model(paddle.to_tensor(x)).numpy().argmax(axis=1)
    acc = float((pred == labels).mean())
    assert abs(acc - meta["heldout_accuracy"]) <= 0.005
    assert acc >= 0.9  # chance is 0.1
