"""op.jpeg_dct_scaling on a real server: a big JPEG is answered from the DCT-scaled decode, not the full one
(a 1-pixel stripe pattern makes the two paths' inputs, and so the random tiny model's answers, far apart)."""

from __future__ import annotations

import numpy as np
import simplejpeg

from resnest_serving.client import connect
from resnest_serving.pipeline.local import LocalClassifier
from resnest_serving.pipeline.preprocess import Preprocessor, PreprocessSpec


def stripes_jpeg() -> bytes:
    img = np.zeros((600, 800, 3), np.uint8)
    img[:, ::2] = 255  # full decode + bilinear resize keeps stripes; 1/8 DCT decoding averages them to grey
    return simplejpeg.encode_jpeg(img, quality=95)


def test_served_answer_comes_from_the_dct_scaled_decode(server_factory, tiny_model_dir):
    data = stripes_jpeg()
    model = LocalClassifier(tiny_model_dir, engine="paddle")
    meta = model.bundle.meta
    local = {on: float(model.probabilities(Preprocessor(PreprocessSpec(
        meta.resize_short, meta.crop_size, meta.mean, meta.std, jpeg_dct_scaling=on)).from_bytes("s", data)[None]).max())
        for on in (False, True)}
    assert abs(local[True] - local[False]) > 0.05  # the two paths are told apart by the answer
    for on in (False, True):
        server = server_factory(op={"jpeg_dct_scaling": on})
        with connect("grpc", f"127.0.0.1:{server.ports['grpc']}") as client:
            (result,) = client.classify({"stripes.jpg": data})
        assert abs(result.prob - local[on]) < 1e-3, (on, result, local)
