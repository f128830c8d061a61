"""The extract's quarantine: every rejected listing, photo and event of the ds, with its reason."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lookalike import schemas


class Quarantine:
    """The ds's rejected rows, streamed to ``quarantine/part-0.parquet``; an item rejected for the
    snapshot and again for the catalogue is written once."""

    def __init__(self, out: Path, ds: str):
        self.ds = ds
        self._writer = pq.ParquetWriter(out / "part-0.parquet", schemas.QUARANTINE, compression="zstd")
        self.image_rejects: dict[str, tuple[str, str]] = {}  # item_id → (image_key, reason), rejects only
        self._seen: set[tuple[str, str]] = set()

    def add(self, rejects: list[dict], dedupe: bool = False) -> None:
        """``rejects`` (item_id, reason …) as quarantine rows; with ``dedupe``, a listing already
        quarantined for the same reason (for the snapshot, now for the catalogue) is not repeated."""
        rows = []
        for r in rejects:
            key = (r["item_id"], r["reason"])
            if r["item_id"] is not None:  # rows without an id cannot be told apart: each is kept
                if dedupe and key in self._seen:
                    continue
                self._seen.add(key)
            rows.append({"ds": self.ds, "stage": "extract", **r})
        if rows:
            self._writer.write_table(pa.Table.from_pylist(rows, schema=schemas.QUARANTINE))

    def close(self) -> None:
        self._writer.close()
