"""Validate and normalise one source image: the pure core of extract.

``prepare_image`` never raises on bad input: it returns a ``PreparedImage`` whose ``reason``
says why the file was rejected ("zero-byte file", "not an image", "truncated or corrupt", …),
so the caller can quarantine the row and carry on.
"""
from __future__ import annotations

import functools
import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

ACCEPTED_FORMATS = {"JPEG", "PNG", "WEBP"}


@dataclass(frozen=True)
class PreparedImage:
    jpeg: bytes | None  # RGB JPEG, longest side = size (never upscaled)
    sha256: str | None  # of the source file's bytes: identifies the image across runs
    width: int = 0
    height: int = 0
    reason: str | None = None  # why it was rejected; None when usable


def read_image_bytes(store: str, key: str | None, max_bytes: int) -> tuple[bytes | None, str | None]:
    """Bytes of ``key`` in the image store ``store`` (a directory or ``s3://bucket/prefix``), or (None, reason)."""
    if key is None or key == "":
        return None, "no image_key"
    if store.startswith("s3://"):
        return _read_s3(store, key, max_bytes)
    root = Path(store)
    path = (root / key).resolve()
    if root.resolve() not in path.parents:
        return None, f"image_key {key!r} escapes the image store"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None, f"image file not found: {key}"
    if size > max_bytes:
        return None, f"image file too large: {size} bytes > {max_bytes}"
    return path.read_bytes(), None


@functools.lru_cache(maxsize=4)
def _s3_client(endpoint: str | None):  # boto3 clients are thread-safe; one per endpoint
    import boto3

    return boto3.client("s3")


def _read_s3(store: str, key: str, max_bytes: int) -> tuple[bytes | None, str | None]:
    """One object of an S3 image store; the size limit is checked before the body is read."""
    from botocore.exceptions import ClientError

    from pipelines.objectstore import split_s3

    bucket, prefix = split_s3(store)
    if ".." in key.split("/"):
        return None, f"image_key {key!r} escapes the image store"
    client = _s3_client(os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
    try:
        obj = client.get_object(Bucket=bucket, Key=f"{prefix}/{key}" if prefix else key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None, f"image file not found: {key}"
        raise  # a lost connection or bad credentials: the task fails and retries, nothing is quarantined
    if obj["ContentLength"] > max_bytes:
        obj["Body"].close()
        return None, f"image file too large: {obj['ContentLength']} bytes > {max_bytes}"
    return obj["Body"].read(), None


def prepare_image(data: bytes, *, size: int, max_pixels: int, min_side: int, quality: int = 90) -> PreparedImage:
    """Decode, orient, convert to RGB and downsize ``data``; quarantine-worthy input gets a reason."""
    if not data:
        return PreparedImage(None, None, reason="zero-byte file")
    sha = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format not in ACCEPTED_FORMATS:
                return PreparedImage(None, sha, reason=f"unsupported image format {img.format}")
            w, h = img.size
            if w * h > max_pixels:  # checked from the header, before any pixel is decoded
                return PreparedImage(None, sha, reason=f"too many pixels: {w}x{h} > {max_pixels}")
            if min(w, h) < min_side:
                return PreparedImage(None, sha, reason=f"image too small: {w}x{h}")
            img.draft("RGB", (size, size))  # JPEG: decode at reduced scale, much faster for big photos
            img.load()
    except UnidentifiedImageError:
        return PreparedImage(None, sha, reason="not an image")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return PreparedImage(None, sha, reason=f"truncated or corrupt image: {exc}")
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    img = img.convert("RGB")  # CMYK, L, P, I;16 … → RGB
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return PreparedImage(buf.getvalue(), sha, img.width, img.height)
