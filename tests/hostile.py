"""Hostile input for extract's validators: hypothesis strategies and the properties they must keep.

Shared by ``tests/extract/test_hostile.py`` (a few hundred cases in ``make test``) and
``benchmarks/fuzz_inputs.py`` (tens of thousands). Each property says what must hold for any
input: never an exception, and every row either kept in a normalised form that fits the output
schema or rejected with a reason.
"""
from __future__ import annotations

import io
import math
import os
import struct
import zlib
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from hypothesis import strategies as st
from PIL import Image

from lookalike import schemas
from lookalike.extract.images import prepare_image, read_image_bytes
from lookalike.extract.validate import EVENTS, MAX_ID_CHARS, STATUSES, validate_events, validate_listings

SIZE, MAX_PIXELS, MIN_SIDE, MAX_BYTES = 32, 1_000_000, 4, 200_000

# ---------------------------------------------------------------- images

_MODES = ["RGB", "RGBA", "L", "LA", "P", "PA", "1", "I;16", "I", "F", "CMYK"]
_FORMATS = ["PNG", "JPEG", "WEBP", "GIF", "TIFF", "BMP"]


def _encode(seed: int, mode: str, fmt: str, w: int, h: int, frames: int, exif_orientation: int | None) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    base = Image.fromarray(pixels, "RGB")
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (h, w)).astype(np.uint16))  # mode I;16
    elif mode in ("I", "F"):
        img = base.convert("L").convert(mode)
    else:
        img = base.convert(mode)
    buf = io.BytesIO()
    kwargs = {}
    if exif_orientation is not None and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    if frames > 1 and fmt in ("PNG", "WEBP", "GIF"):
        others = [Image.fromarray(np.roll(pixels, i, axis=1), "RGB").convert(img.mode if fmt != "GIF" else "P")
                  for i in range(1, frames)]
        kwargs.update(save_all=True, append_images=others)
    try:
        img.save(buf, fmt, **kwargs)
    except (OSError, ValueError, KeyError, TypeError):  # a mode the format cannot store: plain RGB instead
        buf = io.BytesIO()
        base.save(buf, fmt)
    return buf.getvalue()


def _lie_about_size(data: bytes, width: int, height: int) -> bytes:
    """A PNG whose header declares another size (CRC fixed, so decoders believe it until the pixels run out)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return data
    ihdr = bytearray(data[8:33])
    ihdr[8:16] = struct.pack(">II", width, height)
    ihdr[21:25] = struct.pack(">I", zlib.crc32(bytes(ihdr[4:21])))
    return data[:8] + bytes(ihdr) + data[33:]


@st.composite
def image_bytes(draw) -> bytes:
    """Random bytes, or a real image (any mode, format, size, animation, EXIF) then damaged at random."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=2048))
    data = _encode(draw(st.integers(0, 2**16)), draw(st.sampled_from(_MODES)), draw(st.sampled_from(_FORMATS)),
                   draw(st.integers(2, 64)), draw(st.integers(2, 64)), draw(st.sampled_from([1, 1, 2, 3])),
                   draw(st.sampled_from([None, None, 1, 3, 6, 8, 0, 9, 65535])))
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip", "lie", "prefix", "huge-lie"]))
    if damage == "truncate":
        data = data[:draw(st.integers(0, max(0, len(data) - 1)))]
    elif damage == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
        data = bytes(out)
    elif damage == "lie":
        data = _lie_about_size(data, draw(st.integers(1, 5000)), draw(st.integers(1, 5000)))
    elif damage == "huge-lie":
        data = _lie_about_size(data, draw(st.integers(2**16, 2**31 - 1)), draw(st.integers(2**16, 2**31 - 1)))
    elif damage == "prefix":
        data = draw(st.binary(min_size=1, max_size=16)) + data
    return data


def check_image(data: bytes) -> str:
    """``prepare_image`` keeps or rejects ``data``, never raises; a kept image is a small RGB JPEG."""
    prepared = prepare_image(data, size=SIZE, max_pixels=MAX_PIXELS, min_side=MIN_SIDE)
    if prepared.reason is not None:
        assert isinstance(prepared.reason, str) and prepared.reason and prepared.jpeg is None
        return "rejected: " + prepared.reason.split(":", 1)[0]
    out = Image.open(io.BytesIO(prepared.jpeg))
    assert out.format == "JPEG" and out.mode == "RGB"
    assert out.size == (prepared.width, prepared.height) and max(out.size) <= SIZE
    assert prepared.sha256 and len(prepared.sha256) == 64
    return "kept"


# ---------------------------------------------------------------- image keys

PLANTED = ["ok.jpg", "sub/ok.png", "dir", "link-out", "link-in.jpg", "loop", "fifo", "big.jpg", "empty.jpg"]


def make_store(root: Path) -> Path:
    """An image store with the files a hostile key may name: good files, a directory, symlinks out of
    the store and into it, a symlink loop, a FIFO, a sparse file over the size limit, an empty file."""
    store = root / "store"
    (store / "sub").mkdir(parents=True, exist_ok=True)
    (store / "dir").mkdir(exist_ok=True)
    good = _encode(1, "RGB", "JPEG", 40, 30, 1, None)
    (store / "ok.jpg").write_bytes(good)
    (store / "sub" / "ok.png").write_bytes(_encode(2, "RGB", "PNG", 40, 30, 1, None))
    outside = root / "outside.jpg"
    outside.write_bytes(good)
    (root / "outside-dir").mkdir(exist_ok=True)
    (root / "outside-dir" / "ok.jpg").write_bytes(good)
    for name, target in (("link-out", outside), ("link-in.jpg", store / "ok.jpg"), ("loop", store / "loop"),
                         ("dir-out", root / "outside-dir"), ("dir-in", store / "sub")):
        if not (store / name).is_symlink():
            os.symlink(target, store / name)
    if not (store / "fifo").exists():
        os.mkfifo(store / "fifo")
    with open(store / "big.jpg", "wb") as fh:
        fh.truncate(MAX_BYTES * 10)
    (store / "empty.jpg").write_bytes(b"")
    return store


_KEY_PARTS = st.one_of(st.sampled_from(PLANTED + ["..", ".", "", "missing.jpg", "sub", "ok.jpg\x00.png"]),
                       st.text(max_size=12), st.text(min_size=250, max_size=300, alphabet="ab"))


@st.composite
def image_keys(draw):
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=8)))
    key = "/".join(draw(st.lists(_KEY_PARTS, min_size=1, max_size=4)))
    if kind == 1:
        key = "/" + key
    if kind == 2:
        key = "x" * draw(st.integers(1000, 5000))
    return key


def check_key(store: Path, key) -> str:
    """``read_image_bytes`` returns bytes only for a regular file inside the store, a reason otherwise."""
    data, reason = read_image_bytes(str(store), key, MAX_BYTES)
    if reason is not None:
        assert data is None and isinstance(reason, str) and reason
        return "rejected: " + reason.split(":", 1)[0].split(" '")[0]
    assert isinstance(data, bytes) and len(data) <= MAX_BYTES
    path = (store / key).resolve()
    assert store.resolve() in path.parents and path.is_file()
    return "kept"


# ---------------------------------------------------------------- listings and events

_WEIRD = ["\u202e", "\u200f", "\u200b", "\x00", "\x07", "\x1b[31m", "\r\n", "\t", "\ud800", "👗", "👩🏽‍🎤", "ﷺ",
          "\u0301", "\ufeff", "\x85", "\u2028"]
_TEXT = st.one_of(st.text(max_size=40), st.lists(st.sampled_from(_WEIRD + ["a", " ", "Ü"]), max_size=20).map("".join))
_MAYBE_TEXT = st.one_of(st.none(), _TEXT, st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                        st.binary(max_size=8))
_TIMESTAMP = st.one_of(
    st.none(), _TEXT, st.floats(),
    st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1)),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2030, 1, 1),
                 timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=9)), timezone(timedelta(hours=-5))])),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2030, 1, 1)).map(lambda d: d.isoformat()),
    st.sampled_from(["2026-11-20 10:00:00", "2026-11-20T10:00:00Z", "2026-11-20T10:00:00+09:00", "2026-02-30T00:00:00",
                     "20261120", "1e10", ""]))
_PRICE = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**30, 10**30),
                   st.booleans(), _TEXT,
                   st.sampled_from(["12.50", " 7 ", "1e400", "-3", "nan", "inf", "¥1,000", "0x10", "1_000"]))
_IDS = st.one_of(st.sampled_from(["i1", "i2", "i3", "i4"]), st.none(), _TEXT, st.integers(0, 5),
                 st.text(min_size=MAX_ID_CHARS + 1, max_size=MAX_ID_CHARS + 5, alphabet="z"))


def _mostly(valid, hostile):
    """``valid`` three times in four, else ``hostile``: most rows of a real source are fine."""
    return st.integers(0, 3).flatmap(lambda i: valid if i else hostile)


_GOOD_TS = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1)).map(
    lambda d: d.strftime("%Y-%m-%dT%H:%M:%S"))


@st.composite
def listing_rows(draw) -> pd.DataFrame:
    n = draw(st.integers(1, 12))
    rows = []
    for _ in range(n):
        rows.append({
            "item_id": draw(_mostly(st.sampled_from(["i1", "i2", "i3", "i4", "i5", "i6"]), _IDS)),
            "title": draw(_mostly(st.text(min_size=1, max_size=30),
                                  st.one_of(_MAYBE_TEXT, st.just("t" * 100_000), st.just("\u202e" * 3 + "dress 👗")))),
            "description": draw(_MAYBE_TEXT), "category": draw(_MAYBE_TEXT), "brand": draw(_MAYBE_TEXT),
            "price": draw(_mostly(st.floats(0, 1e6), _PRICE)),
            "status": draw(_mostly(st.sampled_from(sorted(STATUSES)), _MAYBE_TEXT)),
            "seller_id": draw(_MAYBE_TEXT), "image_key": draw(st.one_of(_MAYBE_TEXT, image_keys())),
            "created_at": draw(_mostly(_GOOD_TS, _TIMESTAMP)), "updated_at": draw(_mostly(_GOOD_TS, _TIMESTAMP)),
        })
    return pd.DataFrame(rows, columns=[f.name for f in schemas.LISTING_FIELDS])


def _as_id(value) -> str | None:
    from lookalike.extract.validate import as_text

    return as_text(value)


def check_listings(frame: pd.DataFrame) -> Counter:
    """Every distinct id is kept once or rejected; kept rows are clean and fit the output schema."""
    ok, rejects = validate_listings(frame)
    assert all(isinstance(r["reason"], str) and r["reason"] for r in rejects)
    ids = [_as_id(v) for v in frame["item_id"]]
    distinct = {i for i in ids if i is not None}
    kept = ok["item_id"].tolist()
    assert len(kept) == len(set(kept)), "duplicate ids kept"
    rejected_ids = [r["item_id"] for r in rejects if r["item_id"] is not None]
    assert set(kept).isdisjoint(rejected_ids)
    assert {i[:MAX_ID_CHARS] for i in distinct} <= set(kept) | set(rejected_ids), "a row vanished"
    assert sum(r["item_id"] is None for r in rejects) >= sum(i is None for i in ids)
    for row in ok.to_dict("records"):
        assert row["status"] in STATUSES and isinstance(row["title"], str) and len(row["title"]) <= 500
        assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in row["title"])
        assert row["price"] is None or (math.isfinite(row["price"]) and 0 <= row["price"] <= 1e12)
        for name in ("created_at", "updated_at"):
            assert datetime.strptime(row[name], "%Y-%m-%dT%H:%M:%S")
    records = {f.name: ok[f.name].tolist() for f in schemas.LISTING_FIELDS}
    pa.Table.from_pydict(records, schema=pa.schema(schemas.LISTING_FIELDS))  # fits the output contract
    return Counter(["kept"] * len(ok) + ["rejected: " + r["reason"].split(":", 1)[0].split(" '")[0] for r in rejects])


@st.composite
def event_rows(draw) -> pd.DataFrame:
    rows = [{"user_id": draw(_mostly(st.sampled_from(["u1", "u2"]), _IDS)), "session_id": draw(_MAYBE_TEXT),
             "event": draw(_mostly(st.sampled_from(sorted(EVENTS)), _MAYBE_TEXT)),
             "item_id": draw(_mostly(st.sampled_from(["i1", "i2"]), _IDS)),
             "source_item_id": draw(st.one_of(st.none(), _IDS)), "ts": draw(_mostly(_GOOD_TS, _TIMESTAMP))}
            for _ in range(draw(st.integers(1, 12)))]
    return pd.DataFrame(rows, columns=[f.name for f in schemas.INTERACTIONS])


def check_events(frame: pd.DataFrame) -> Counter:
    ok, rejects = validate_events(frame)
    assert len(ok) + len(rejects) == len(frame)
    for row in ok.to_dict("records"):
        assert row["user_id"] and row["item_id"] and row["event"] in EVENTS
        assert datetime.strptime(row["ts"], "%Y-%m-%dT%H:%M:%S")
    pa.Table.from_pandas(ok, schema=schemas.INTERACTIONS, preserve_index=False)
    return Counter(["kept"] * len(ok) + ["rejected: " + r["reason"].split(" '")[0] for r in rejects])
