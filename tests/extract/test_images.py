import io

import numpy as np
import pytest
from PIL import Image

from lookalike.extract.images import prepare_image, read_image_bytes

OPTS = dict(size=64, max_pixels=10_000_000, min_side=16)


def _encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _decoded(prepared):
    return Image.open(io.BytesIO(prepared.jpeg))


def test_resizes_keeping_aspect_and_hashes_the_source():
    data = _encode(Image.new("RGB", (400, 200), (10, 200, 30)), "PNG")
    out = prepare_image(data, **OPTS)
    assert out.reason is None and (out.width, out.height) == (64, 32)
    img = _decoded(out)
    assert img.format == "JPEG" and img.mode == "RGB"
    import hashlib

    assert out.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("data, reason", [
    (b"", "zero-byte file"),
    (b"<html>404</html>", "not an image"),
])
def test_rejects_with_a_reason(data, reason):
    assert prepare_image(data, **OPTS).reason == reason


def test_truncated_jpeg_is_rejected():
    data = _encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)), "JPEG")
    out = prepare_image(data[: len(data) // 3], **OPTS)
    assert out.jpeg is None and out.reason.startswith("truncated or corrupt")


def test_decompression_bomb_is_rejected_before_decoding():
    data = _encode(Image.new("L", (5000, 5000)), "PNG")
    out = prepare_image(data, size=64, max_pixels=1_000_000, min_side=16)
    assert out.reason == "too many pixels: 5000x5000 > 1000000"


def test_tiny_images_are_rejected():
    assert prepare_image(_encode(Image.new("RGB", (8, 8)), "PNG"), **OPTS).reason == "image too small: 8x8"


def test_cmyk_and_alpha_become_rgb():
    cmyk = prepare_image(_encode(Image.new("CMYK", (100, 100), (0, 255, 255, 0)), "JPEG"), **OPTS)
    assert cmyk.reason is None
    r, g, b = _decoded(cmyk).getpixel((32, 32))
    assert r > 200 and g < 60 and b < 60  # cyan-free, magenta+yellow = red
    rgba = Image.new("RGBA", (100, 100), (0, 0, 0, 0))  # fully transparent → white background
    out = prepare_image(_encode(rgba, "PNG"), **OPTS)
    assert min(_decoded(out).getpixel((10, 10))) > 240


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (200, 100), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    out = prepare_image(_encode(img, "JPEG", exif=exif.tobytes()), **OPTS)
    assert (out.width, out.height) == (32, 64)


def test_read_image_bytes_guards(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x" * 100)
    assert read_image_bytes(str(tmp_path), None, 1000) == (None, "no image_key")
    assert read_image_bytes(str(tmp_path), "missing.jpg", 1000)[1] == "image file not found: missing.jpg"
    assert read_image_bytes(str(tmp_path), "../etc/passwd", 1000)[1].endswith("escapes the image store")
    assert read_image_bytes(str(tmp_path), "a.jpg", 10)[1].startswith("image file too large")
    assert read_image_bytes(str(tmp_path), "a.jpg", 1000) == (b"x" * 100, None)
