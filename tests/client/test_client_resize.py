"""--client-resize: the client shrinks big photos to the model's resize target before sending; small images,
and anything it cannot decode, go as they are."""

from __future__ import annotations

import io
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from resnest_serving.cli import main
from resnest_serving.client.images import shrink_image
from resnest_serving.pipeline.local import LocalClassifier


def big_jpeg(image_paths, size=(1600, 1200)) -> bytes:
    return cv2.imencode(".jpg", cv2.resize(cv2.imread(str(image_paths[0])), size))[1].tobytes()


def test_shrink_image_keeps_the_short_side_at_the_target(image_paths):
    data = big_jpeg(image_paths)
    small = shrink_image(data, 256)
    img = cv2.imdecode(np.frombuffer(small, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape[:2] == (256, 341) and small[:2] == b"\xff\xd8" and len(small) < len(data) / 5
    png = cv2.imencode(".png", cv2.resize(cv2.imread(str(image_paths[0])), (600, 800)))[1].tobytes()
    assert cv2.imdecode(np.frombuffer(shrink_image(png, 256), np.uint8), 1).shape[:2] == (341, 256)
    assert shrink_image(png, 256)[:4] == b"\x89PNG"
    original = image_paths[0].read_bytes()  # 500x375: not twice 256, sent as it is
    assert shrink_image(original, 256) == original
    assert shrink_image(b"not an image", 256) == b"not an image"
    with pytest.raises(ValueError, match=">= 1"):
        shrink_image(data, 0)


def test_shrink_image_applies_exif_orientation(image_paths):
    buf = io.BytesIO()
    src = Image.open(io.BytesIO(big_jpeg(image_paths)))
    exif = src.getexif()
    exif[0x0112] = 6  # rotate 90° to display: the shrunk image is upright, portrait
    src.save(buf, "JPEG", exif=exif.tobytes())
    img = cv2.imdecode(np.frombuffer(shrink_image(buf.getvalue(), 256), np.uint8), cv2.IMREAD_COLOR)
    assert img.shape[:2] == (341, 256)


def test_predict_sends_the_shrunk_image(topk_server, tiny_model_dir, image_paths, tmp_path, capsys):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(big_jpeg(image_paths))
    rc = main(["--log-level", "WARNING", "predict", "--protocol", "grpc", "--endpoint",
               f"127.0.0.1:{topk_server.ports['grpc']}", "--client-resize", "72", "--json", str(photo)])
    assert rc == 0
    (row,) = json.loads(capsys.readouterr().out)
    model = LocalClassifier(tiny_model_dir, engine="paddle")
    want = model.classify_bytes([shrink_image(photo.read_bytes(), 72)], k=1)[0]
    assert abs(row["prob"] - want.scores[0]) < 5e-4, (row, want)  # the original gives 0.002 away here
