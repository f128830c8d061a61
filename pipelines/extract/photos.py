"""Each listing's photo fetched and normalised once, then reused while the store holds the same object.

A night's extract writes, with every normalised photo, its ``image_source``: how it was
normalised and which object it came from. The identity of the object is

- ``version:<v>`` when the source selects an ``image_version`` column (a photo id, a revision
  number, an upload timestamp): the store is not asked at all;
- otherwise what the store says about it: ``file:<size>:<mtime_ns>:<ctime_ns>`` on disk, or
  ``etag:<ETag>`` on S3, checked with a conditional GET (:func:`~lookalike.extract.images.fetch_image`).

The next extract looks each item up among the photos of the newest earlier extract, and of its
own snapshot when it writes the catalogue (an item both in the window and on sale is decoded
once). A photo is reused when the item's ``image_key`` and the identity are the same and it was
normalised the same way; anything else (a new item, a new key, a rewritten file under the same
key, another ``extract.image_size``) is fetched and decoded again.

Lookups walk files sorted by item_id in step with tonight's rows, which come sorted the same way
(``sql/staging/latest_listing.sql``), so one batch of each file is in memory at a time.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

log = logging.getLogger(__name__)

MARKER = "extract.json"  # in a ds's work area once its extract has finished: the photos there are complete
PHOTO_COLUMNS = ["item_id", "image_key", "image_source", "image", "image_width", "image_height", "image_sha256"]


def normalisation(ex) -> str:
    """How a photo was normalised, as the prefix of its ``image_source``: other settings, other photos."""
    return f"size={ex.image_size},max_pixels={ex.max_image_pixels},min_side={ex.min_image_side}"


@dataclass(frozen=True)
class Photo:
    image_key: str
    source: str  # "<normalisation>|<identity>"
    jpeg: bytes
    width: int
    height: int
    sha256: str
    checked: bool = False  # its object was found unchanged (or read) tonight: nothing to ask the store

    @property
    def identity(self) -> str:
        return self.source.split("|", 1)[1]


class _Cursor:
    """Forward-only lookups by item_id in one Parquet file sorted by item_id."""

    def __init__(self, path: Path, checked: bool, batch_rows: int = 2048):
        self.name = str(path)
        self.checked = checked
        self._batches = pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=PHOTO_COLUMNS)
        self._ids: list = []
        self._rows: dict[str, list] = {}
        self._i = 0

    def get(self, item_id: str) -> Photo | None:
        while True:
            while self._i < len(self._ids) and self._ids[self._i] < item_id:
                self._i += 1
            if self._i < len(self._ids):
                if self._ids[self._i] != item_id:
                    return None
                key, source, image, width, height, sha = (self._rows[name][self._i] for name in PHOTO_COLUMNS[1:])
                if source is None or image is None:
                    return None
                return Photo(key, source, image, width, height, sha, self.checked)
            batch = next(self._batches, None)
            if batch is None:
                self._ids = []
                return None
            self._rows = {name: batch.column(name).to_pylist() for name in PHOTO_COLUMNS}
            self._ids, self._i = self._rows["item_id"], 0


class EarlierPhotos:
    """Photos already normalised, from files sorted by item_id, looked up in increasing item_id
    order (``get`` must be called with ids that never decrease); ``checked`` files (tonight's
    snapshot, for the catalogue) come first and give photos whose object needs no new look."""

    def __init__(self, files: list[Path], checked: list[Path] = ()):
        self._cursors = []
        for path in [*checked, *files]:
            try:
                if "image_source" in pq.ParquetFile(path).schema_arrow.names:
                    self._cursors.append(_Cursor(path, path in checked))  # opened now: a rerun cannot pull it away
            except (OSError, ValueError) as exc:  # gone, or unreadable: only reuse is lost
                log.warning("extract: not reusing photos from %s (%s)", path, exc)
        self.files = [c.name for c in self._cursors]

    def get(self, item_id: str) -> Photo | None:
        for cursor in self._cursors:
            photo = cursor.get(item_id)
            if photo is not None:
                return photo
        return None


def earlier_extract(work_root: Path, ds: str) -> str | None:
    """The ds whose finished extract tonight's reuses photos from: the newest before ``ds``, else
    the oldest after it (a backfill); None on a first night."""
    done = sorted(p.parent.name.removeprefix("ds=") for p in Path(work_root).glob(f"ds=*/{MARKER}"))
    done = [d for d in done if d != ds]
    before = [d for d in done if d < ds]
    return before[-1] if before else (done[0] if done else None)


def earlier_photos(wh, ds: str) -> tuple[str | None, list[Path]]:
    """(the earlier ds, its item files) for :class:`EarlierPhotos`."""
    earlier = earlier_extract(wh.work_root, ds)
    if earlier is None:
        return None, []
    return earlier, [wh.work(earlier, name) / "part-0.parquet" for name in ("catalog", "listings_snapshot")]


def write_marker(wh, ds: str, summary: dict) -> None:
    from lookalike.atomic import atomic_write_text

    atomic_write_text(wh.work(ds, MARKER), json.dumps(summary, indent=2, sort_keys=True))


def read_marker(wh, ds: str) -> dict | None:
    path = wh.work(ds, MARKER)
    return json.loads(path.read_text()) if path.exists() else None
