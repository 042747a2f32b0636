"""Preprocessing equals a plain NumPy/cv2 re-statement of PaddleClas's steps; bad images get clear errors."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest

from resnest_serving.pipeline.errors import ErrorCode, PipelineError
from resnest_serving.pipeline.preprocess import Preprocessor, PreprocessSpec, b64decode_image, decode_image


def paddleclas_reference(path, resize_short=256, crop=224) -> np.ndarray:
    """PaddleClas deploy/python/preprocess.py, step by step: decode, RGB, ResizeImage, CropImage,
    NormalizeImage(scale 1/255, ImageNet mean/std), ToCHW."""
    img = cv2.imread(str(path))
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    h, w = img.shape[:2]
    percent = float(resize_short) / min(w, h)
    w2, h2 = int(round(w * percent)), int(round(h * percent))
    img = cv2.resize(img, (w2, h2))
    x0, y0 = (w2 - crop) // 2, (h2 - crop) // 2
    img = img[y0:y0 + crop, x0:x0 + crop, :]
    mean = np.array([0.485, 0.456, 0.406]).reshape((1, 1, 3)).astype("float32")
    std = np.array([0.229, 0.224, 0.225]).reshape((1, 1, 3)).astype("float32")
    img = (img.astype("float32") * np.float32(1.0 / 255.0) - mean) / std
    return img.transpose((2, 0, 1))


@pytest.mark.parametrize("resize_short,crop", [(256, 224), (288, 256), (320, 320)])
def test_matches_paddleclas_steps(image_paths, resize_short, crop):
    pre = Preprocessor(PreprocessSpec(resize_short, crop))
    for path in image_paths:
        got = pre(path.name, base64.b64encode(path.read_bytes()).decode())
        want = paddleclas_reference(path, resize_short, crop)
        assert got.shape == (3, crop, crop) and got.dtype == np.float32
        assert np.abs(got - want).max() < 1e-5, path.name


def test_base64_tolerates_whitespace_and_missing_padding():
    assert b64decode_image("k", "aGVsbG8\n") == b"hello"
    assert b64decode_image("k", "aGVsbG8=") == b"hello"


def test_base64_fast_path_gives_the_standard_librarys_bytes(image_paths):
    """Canonical text takes pybase64's strict decoder; MIME line breaks and missing padding the tolerant path:
    both give exactly what CPython's base64 gives; non-ASCII text and a stray character are refused."""
    for path in image_paths:
        data = path.read_bytes()
        text = base64.b64encode(data).decode()
        assert b64decode_image("k", text) == b64decode_image("k", text.encode()) == data
        assert b64decode_image("k", base64.encodebytes(data).decode()) == data
        assert b64decode_image("k", text.rstrip("=")) == data
        for bad in (text[:100] + "é" + text[100:], text[:100] + "*" + text[100:]):
            with pytest.raises(PipelineError, match="not valid base64"):
                b64decode_image("k", bad)


@pytest.mark.parametrize("value,message", [
    ("", "empty value"),
    ("!!not base64!!", "not valid base64"),
    (" \n", "zero bytes"),
])
def test_bad_base64(value, message):
    with pytest.raises(PipelineError, match=message) as info:
        b64decode_image("image", value)
    assert info.value.code == ErrorCode.INPUT_PARAMS_ERROR
    assert "'image'" in info.value.message


def test_not_an_image(image_paths):
    with pytest.raises(PipelineError, match="not a decodable image"):
        decode_image("a", b"hello world", 10**8)


def test_jpeg_integrity_is_checked_by_decoding(image_paths):
    """Truncation and missing scan data are refused whatever the last bytes are; trailing bytes after a
    complete JPEG are harmless and accepted (the decoder stops at the end-of-image marker)."""
    jpeg = image_paths[0].read_bytes()
    whole = decode_image("ok", jpeg, 10**8)
    assert np.array_equal(decode_image("tail", jpeg + b"\x00" * 100, 10**8), whole)
    with pytest.raises(PipelineError, match="corrupt JPEG.*Premature end of JPEG file"):
        decode_image("b", jpeg[: len(jpeg) // 2], 10**8)
    with pytest.raises(PipelineError, match="corrupt JPEG.*premature end of data segment"):
        decode_image("c", jpeg[: len(jpeg) // 2] + b"\xff\xd9", 10**8)


def test_corrupt_png_is_refused():
    ok, png = cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
    data = bytearray(png.tobytes())
    data[60] ^= 0xFF  # inside IDAT: its CRC no longer matches
    with pytest.raises(PipelineError, match="corrupt PNG"):
        decode_image("p", bytes(data), 10**8)
    with pytest.raises(PipelineError, match="corrupt PNG"):
        decode_image("p", png.tobytes()[:-40], 10**8)


def test_decodes_like_cv2_with_exif_orientation(image_paths):
    """The JPEG decoder gives cv2.imdecode's pixels, turned upright by the EXIF orientation as cv2 does."""
    import io

    from PIL import Image

    src = Image.open(image_paths[0])
    for orientation in range(1, 9):
        exif = src.getexif()
        exif[0x0112] = orientation
        buf = io.BytesIO()
        src.save(buf, "JPEG", exif=exif.tobytes())
        want = cv2.imdecode(np.frombuffer(buf.getvalue(), np.uint8), cv2.IMREAD_COLOR)
        assert np.array_equal(decode_image("o", buf.getvalue(), 10**8), want), orientation



def test_rgb_decode_gives_the_same_pixels_as_flipping_after_the_crop(image_paths):
    """The pixels path decodes straight to RGB (no flip after the crop): for every accepted format and EXIF
    orientation its uint8 pixels equal cv2.imdecode (BGR) → resize → crop → BGR→RGB, bit for bit."""
    import io

    from PIL import Image

    pre = Preprocessor(PreprocessSpec())
    src = Image.open(image_paths[0])
    encoded = []
    for orientation in (1, 3, 6, 8):
        exif = src.getexif()
        exif[0x0112] = orientation
        buf = io.BytesIO()
        src.save(buf, "JPEG", exif=exif.tobytes())
        encoded.append(buf.getvalue())
    for ext in (".png", ".bmp", ".webp"):
        ok, data = cv2.imencode(ext, cv2.imread(str(image_paths[1])))
        encoded.append(data.tobytes())
    encoded += [path.read_bytes() for path in image_paths]
    for i, data in enumerate(encoded):
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        want = np.ascontiguousarray(pre.resize_crop("k", bgr)[:, :, ::-1])
        got = pre.pixels_from_bytes("k", data)
        assert got.flags.c_contiguous and got.dtype == np.uint8 and np.array_equal(got, want), i
        assert np.array_equal(pre.pixels_from_bgr("k", bgr), want), i
        assert np.array_equal(decode_image("k", data, 10**8, rgb=True), bgr[:, :, ::-1]), i

def test_multi_picture_jpeg_is_a_jpeg(image_paths):
    """Phone photos often carry an MPF segment (Pillow: format "MPO"): decoded like any JPEG, as cv2 does."""
    import io

    from PIL import Image

    first = Image.open(image_paths[0])
    buf = io.BytesIO()
    first.save(buf, "MPO", save_all=True, append_images=[first.rotate(90)])
    data = buf.getvalue()
    assert Image.open(io.BytesIO(data)).format == "MPO"
    want = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(decode_image("mpo", data, 10**8), want)


def test_formats_without_checked_headers_are_refused():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, "TIFF")
    with pytest.raises(PipelineError, match="TIFF images are not accepted; send JPEG, PNG, BMP, WEBP"):
        decode_image("t", buf.getvalue(), 10**8)


def test_pixel_limit_checked_before_decoding():
    ok, png = cv2.imencode(".png", np.zeros((1000, 2000, 3), np.uint8))
    with pytest.raises(PipelineError, match="2000x1000 = 2000000 pixels exceeds the limit of 1000000"):
        decode_image("big", png.tobytes(), 1_000_000)
    assert decode_image("big", png.tobytes(), 2_000_000).shape == (1000, 2000, 3)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with one row of data: a decompression bomb's shape
    without its cost (decoding it would fail, so refusing it from the header is the only way to pass)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 8))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("width,height,message", [
    (30000, 30000, "30000x30000 = 900000000 pixels exceeds the limit of 40000000"),
    (65535, 65535, "65535x65535 = 4294836225 pixels exceeds the limit"),
    (1, 10000, "1x10000 has an aspect ratio of 1e\\+04, over the limit of 20"),
    (5000, 200, "5000x200 has an aspect ratio of 25, over the limit of 20"),
])
def test_bombs_and_strips_refused_from_the_header(width, height, message):
    with pytest.raises(PipelineError, match=message) as info:
        decode_image("bomb", png_header_only(width, height), 40_000_000)
    assert info.value.code == ErrorCode.INPUT_PARAMS_ERROR


def test_tiny_image_is_upscaled_like_paddleclas():
    """An 8x8 image is enlarged to the short side (72, bilinear) and centre-cropped (64), as PaddleClas's
    ResizeImage(resize_short) + CropImage + NormalizeImage + ToCHWImage do, computed here step by step."""
    bgr = np.random.default_rng(5).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    ok, png = cv2.imencode(".png", bgr)
    out = Preprocessor(PreprocessSpec(72, 64))("d", base64.b64encode(png.tobytes()))
    big = cv2.resize(bgr, (72, 72), interpolation=cv2.INTER_LINEAR)[4:68, 4:68, ::-1].astype(np.float32)
    want = ((big / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])).transpose(2, 0, 1)
    assert out.shape == (3, 64, 64) and np.abs(out - want).max() < 1e-5


# -- op.jpeg_dct_scaling ---------------------------------------------------------------------------------


def test_dct_scaling_leaves_small_images_and_pngs_exact(image_paths):
    """The shared photos (short side 333-500 < 2 x 256) and any PNG decode exactly as without the key."""
    full, dct = Preprocessor(PreprocessSpec()), Preprocessor(PreprocessSpec(jpeg_dct_scaling=True))
    for path in image_paths:
        assert np.array_equal(full.from_bytes(path.name, path.read_bytes()), dct.from_bytes(path.name, path.read_bytes()))
    png = cv2.imencode(".png", cv2.resize(cv2.imread(str(image_paths[0])), (1200, 900)))[1].tobytes()
    assert np.array_equal(full.from_bytes("p", png), dct.from_bytes("p", png))


@pytest.mark.parametrize("orientation", [1, 6])
def test_dct_scaling_decodes_big_jpegs_small_and_close(image_paths, orientation):
    """A 12-megapixel photo is decoded at 1/8 scale (short side still >= resize_short, EXIF orientation
    applied) and its model input stays close to the full decode's."""
    from bench.decode import to_jpeg

    data = to_jpeg(cv2.imread(str(image_paths[0])), (4032, 3024), 92)
    if orientation != 1:  # the same pixels, tagged "rotate 90° clockwise to display"
        import io

        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            exif = img.getexif()
            exif[0x0112] = orientation
            out = io.BytesIO()
            img.save(out, "JPEG", quality=92, exif=exif.tobytes())
            data = out.getvalue()
    upright = decode_image("k", data, 10**8)
    small = decode_image("k", data, 10**8, min_short_side=256)
    assert small.shape[:2] == (-(-upright.shape[0] // 8), -(-upright.shape[1] // 8))  # 1/8, rounded up
    assert min(small.shape[:2]) >= 256
    full, dct = Preprocessor(PreprocessSpec()), Preprocessor(PreprocessSpec(jpeg_dct_scaling=True))
    diff = np.abs(full.from_bytes("k", data) - dct.from_bytes("k", data))
    assert 0 < diff.mean() < 0.1  # normalized units (about 58 grey levels each): a few grey levels on average


def test_dct_scaling_effect_on_the_trained_demo_model(tmp_path):
    """The figures README "Big photos" records: the demo model on its 360 held-out digits as 640x640 JPEGs,
    full decode vs DCT-scaled decode and vs a client that shrank the image first (both closer to the 80x80
    digits it was trained on)."""
    from bench.decode import demo_export, digit_rows

    rows = digit_rows(demo_export(tmp_path / "demo"))
    assert rows["images"] == 360
    for path in ("dct", "client_resize"):  # the client's shrinking (client.images.shrink_image) likewise
        assert rows[path]["top1_agreement"] >= 0.97, rows
        assert rows[path]["accuracy"] >= rows["accuracy_full"] - 0.005, rows
