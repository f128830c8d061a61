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
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ACCEPTED_FORMATS = {"JPEG", "PNG", "WEBP"}


@dataclass(frozen=True)
class PreparedImage:
    jpeg: bytes | None  # RGB JPEG, longest side = size (never upscaled)
    sha256: str | None  # of the source file's bytes: identifies the image across runs
    width: int = 0
    height: int = 0
    reason: str | None = None  # why it was rejected; None when usable


MAX_KEY_CHARS = 1024  # S3's own limit on a key; a longer image_key is quarantined
MAX_NAME_CHARS = 255  # one path component (a file name) on the usual file systems


def check_key(key) -> str | None:
    """Why ``key`` cannot name an image in the store (None when it can): missing, not text, a NUL
    byte, too long, absolute, or climbing out with ``..``."""
    if key is None or key == "" or (isinstance(key, float) and key != key):
        return "no image_key"
    if not isinstance(key, str):
        return f"image_key is not text: {type(key).__name__}"
    if "\x00" in key:
        return "image_key contains a NUL byte"
    if len(key) > MAX_KEY_CHARS or any(len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_CHARS
                                       for part in key.split("/")):
        return f"image_key too long ({len(key)} characters)"
    if key.startswith("/") or ".." in key.split("/"):
        return f"image_key {_short(key)!r} escapes the image store"
    return None


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass(frozen=True)
class Fetched:
    """One image store object as ``fetch_image`` found it."""
    data: bytes | None
    reason: str | None = None  # why the row is quarantined; None when usable
    identity: str | None = None  # what the store says about the object: file size and times, or the S3 ETag
    unchanged: bool = False  # the object is still the one known as ``known``: nothing was read


def read_image_bytes(store: str, key, max_bytes: int) -> tuple[bytes | None, str | None]:
    """Bytes of ``key`` in the image store ``store`` (a directory or ``s3://bucket/prefix``), or (None, reason)."""
    fetched = fetch_image(store, key, max_bytes)
    return fetched.data, fetched.reason


def fetch_image(store: str, key, max_bytes: int, known: str | None = None, read: bool = True) -> Fetched:
    """``key`` in the image store ``store``, read unless the store still holds the object whose
    identity was ``known`` (an earlier ``Fetched.identity``): on disk the file's size, mtime and
    ctime (a rewrite changes them; ``touch -d`` cannot set ctime back), on S3 the ETag, asked
    with a conditional GET (``If-None-Match``), so an unchanged photo costs one request and no body.

    With ``read=False`` (a directory store only) nothing is read: the answer says whether the
    file is still ``known``, else it is a ``Fetched`` without data.

    Never raises on a bad key or file: directories, special files, symlinks leaving the store,
    unreadable and oversized files all come back with their reason. A store that cannot be
    reached at all (S3 down) raises, so that the task is retried rather than the rows quarantined.
    """
    reason = check_key(key)
    if reason:
        return Fetched(None, reason)
    if store.startswith("s3://"):
        return _fetch_s3(store, key, max_bytes, known)
    root = _store_root(store)
    try:
        path = Path(_locate(root, key))
    except (OSError, RuntimeError) as exc:  # a symlink loop
        return Fetched(None, f"image_key {_short(key)!r} cannot be resolved: {exc.__class__.__name__}")
    if not str(path).startswith(root.rstrip(os.sep) + os.sep):
        return Fetched(None, f"image_key {_short(key)!r} escapes the image store")
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            return Fetched(None, f"image_key {_short(key)!r} names a directory, not a file")
        if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block or never end
            return Fetched(None, f"image_key {_short(key)!r} is not a regular file")
        identity = f"file:{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}"
        if known is not None and identity == known:
            return Fetched(None, None, identity, unchanged=True)
        if not read:
            return Fetched(None, None, identity)
        if info.st_size > max_bytes:
            return Fetched(None, f"image file too large: {info.st_size} bytes > {max_bytes}")
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)  # the file may have grown since stat
    except FileNotFoundError:
        return Fetched(None, f"image file not found: {_short(key)}")
    except PermissionError:
        return Fetched(None, f"image file not readable: {_short(key)}")
    except OSError as exc:  # ENAMETOOLONG, ELOOP, EIO …: this row's file, not the store
        return Fetched(None, f"image file cannot be read: {_short(key)} ({exc.strerror or exc.__class__.__name__})")
    if len(data) > max_bytes:
        return Fetched(None, f"image file too large: more than {max_bytes} bytes")
    return Fetched(data, None, identity)  # stat before the read: a file rewritten in between is read again next time


@functools.lru_cache(maxsize=16)
def _store_root(store: str) -> str:
    return str(Path(store).resolve())


@functools.lru_cache(maxsize=4096)
def _resolved_dir(root: str, parent: str) -> str:
    return str((Path(root) / parent).resolve())


def _locate(root: str, key: str) -> str:
    """The real path of ``key`` in the store at ``root``, as ``Path.resolve`` gives it, for one
    ``lstat`` in the usual case: each directory is resolved once (its components walked once per
    extract, not once per photo), and only a file that is itself a symlink is resolved in full."""
    rel = PurePosixPath(key)
    if not rel.name:
        return _resolved_dir(root, str(rel))
    path = os.path.join(_resolved_dir(root, str(rel.parent)), rel.name)
    return str(Path(path).resolve()) if os.path.islink(path) else path


def forget_store_layout() -> None:
    """Drop the resolved directories: an extract starts from what the store holds now."""
    _store_root.cache_clear()
    _resolved_dir.cache_clear()


@functools.lru_cache(maxsize=4)
def _s3_client(endpoint: str | None):  # boto3 clients are thread-safe; one per endpoint
    from lookalike.objectstore import s3_client

    return s3_client()


def _fetch_s3(store: str, key: str, max_bytes: int, known: str | None) -> Fetched:
    """One object of an S3 image store; the size limit is checked before the body is read."""
    from botocore.exceptions import ClientError

    from lookalike.objectstore import endpoint, split_s3

    bucket, prefix = split_s3(store)
    client = _s3_client(endpoint())
    conditional = {"IfNoneMatch": known[len("etag:"):]} if known and known.startswith("etag:") else {}
    try:
        obj = client.get_object(Bucket=bucket, Key=f"{prefix}/{key}" if prefix else key, **conditional)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code"))
        if code in ("304", "NotModified"):
            return Fetched(None, None, known, unchanged=True)
        if code in ("NoSuchKey", "404"):
            return Fetched(None, f"image file not found: {_short(key)}")
        raise  # a lost connection or bad credentials: the task fails and retries, nothing is quarantined
    if obj["ContentLength"] > max_bytes:
        obj["Body"].close()
        return Fetched(None, f"image file too large: {obj['ContentLength']} bytes > {max_bytes}")
    return Fetched(obj["Body"].read(), None, f"etag:{obj['ETag']}")


def prepare_image(data: bytes, *, size: int, max_pixels: int, min_side: int, quality: int = 90) -> PreparedImage:
    """Decode, orient, convert to RGB and downsize ``data``; quarantine-worthy input gets a reason.

    Never raises on the bytes: hostile files make Pillow's decoders raise almost anything
    (``OSError``, ``SyntaxError``, ``struct.error``, ``IndexError`` …), and each of those is this
    file's fault, so it becomes the row's reason. Animated images give their first frame.
    """
    if not data:
        return PreparedImage(None, None, reason="zero-byte file")
    sha = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Corrupt EXIF data" per bad file: the reason says enough
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
            img = _to_rgb(ImageOps.exif_transpose(img))
            img.thumbnail((size, size), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=quality)
    except UnidentifiedImageError:
        return PreparedImage(None, sha, reason="not an image")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return PreparedImage(None, sha, reason=f"decompression bomb: {_short(str(exc))}")
    except MemoryError:
        return PreparedImage(None, sha, reason="image too large to decode")
    except Exception as exc:  # noqa: BLE001 - see the docstring: any decoder error is the file's
        return PreparedImage(None, sha, reason=f"truncated or corrupt image: {_short(str(exc) or exc.__class__.__name__)}")
    return PreparedImage(buf.getvalue(), sha, img.width, img.height)


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB on a white background (transparency flattened); 16-bit and float greys scaled to 8 bits."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):  # 16-bit / 32-bit greys: Pillow would clip to 255
        pixels = np.asarray(img, dtype=np.float64)
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
        img = Image.fromarray(scaled.astype(np.uint8), "L")
    return img.convert("RGB")  # CMYK, L, P … → RGB
