"""The extract stage: source database + image store → the ds's snapshot, catalogue and logs.

Outputs, all in the ds's work area (``Warehouse.work``):

- ``listings_snapshot``: listings created in [ds - window_days, ds), deduplicated by item_id
  (latest update wins), with the normalised image and ``image_sha256``;
- ``catalog``: every on_sale listing, the items embedded and offered as neighbours;
- ``quarantine``: every rejected row with its reason (never fatal on its own);
- ``interactions``: the event log of [ds - max(evaluate.log_days, userrec.log_days), ds), for the
  offline evaluation and the user model (each reads its own window of it); events older than
  ``extract.events_refetch_days`` before the earlier night's extract are copied from it, the
  rest read from the source;
- ``extract.json``: written last, the night's counts; its presence says the outputs are complete.

Memory does not grow with the source: rows are read in chunks (:mod:`.source`), listings are
validated and deduplicated through a staging file (:mod:`.validate`), and photos are fetched,
decoded (:mod:`.fetch`) and written a chunk at a time. A photo normalised on an earlier night is
reused unless its object changed (:mod:`.photos`), so a night's cost follows what changed. The
event log is :mod:`.events`, the rejected rows :mod:`.quarantine`; this module is the stage's I/O.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lookalike import faults, schemas
from lookalike.config import Config, redact_url
from lookalike.extract import photos
from lookalike.extract.events import write_events
from lookalike.extract.fetch import Decoders, PhotoResult, PhotoTask, PhotoWork, SparkDecoders, decoders_for
from lookalike.extract.quarantine import Quarantine
from lookalike.extract.source import ExtractError, optional_columns, stream_source, window
from lookalike.extract.validate import (QuarantineShareExceeded, Tally, check_quarantine_share, latest_listings,
                                        reject_listings, stage_listings)
from lookalike.resources import sql_path
from lookalike.storage import Warehouse

log = logging.getLogger(__name__)

__all__ = ["ExtractError", "QuarantineShareExceeded", "run_extract"]

CHUNK_ROWS = 2000  # rows decoded and written per Parquet row group


@dataclass
class PhotoCounts:
    reused: int = 0  # normalised on an earlier night (or for the snapshot tonight) and unchanged
    fetched: int = 0  # read from the image store and decoded
    quarantined: int = 0  # rejected: missing, unreadable or not a usable image


@dataclass
class ItemWriter:
    """Writes an item table of the ds (the snapshot, then the catalogue): the latest listing rows
    (item_id order) checked, rejects to the quarantine, each photo reused or fetched and decoded,
    the usable rows streamed into ``<out>/part-0.parquet``. A photo rejected for the snapshot is
    not fetched again for the catalogue."""

    ds: str
    work: PhotoWork
    decoders: Decoders | SparkDecoders
    quarantine: Quarantine
    counts: PhotoCounts

    def write(self, batches, out: Path, earlier: photos.EarlierPhotos, tally: Tally) -> int:
        """Returns the rows kept."""
        kept = done = 0
        with pq.ParquetWriter(out / "part-0.parquet", schemas.ITEMS, compression="zstd") as writer:
            for frame in batches:
                ok, rejects = reject_listings(frame)
                tally.reject(rejects)
                self.quarantine.add(rejects, dedupe=True)
                done += len(frame)
                if ok.empty:
                    continue
                results = self._photos(ok, earlier)
                good, image_rejects = [], []
                for i, result in enumerate(results):
                    if result.reason:
                        row = {"item_id": ok.at[i, "item_id"], "reason": result.reason,
                               "image_key": ok.at[i, "image_key"]}
                        image_rejects.append(row)
                        self.quarantine.image_rejects[row["item_id"]] = (row["image_key"], result.reason)
                        continue
                    self.counts.reused += result.unchanged
                    self.counts.fetched += not result.unchanged
                    good.append((i, result.photo))
                tally.reject(image_rejects)
                self.quarantine.add(image_rejects, dedupe=True)
                writer.write_table(self._table(ok.iloc[[i for i, _ in good]], [photo for _, photo in good]))
                kept += len(good)
                log.info("extract: %s: %d rows done (%d photos reused, %d fetched, %d quarantined so far)",
                         out.name, done, self.counts.reused, self.counts.fetched, self.counts.quarantined)
        return kept

    def _photos(self, ok: pd.DataFrame, earlier: photos.EarlierPhotos) -> list[PhotoResult]:
        """Per row: the earlier photo when it stands (seen tonight, the source's image_version the same,
        or its object unchanged), the reason the snapshot rejected it, or the photo fetched anew."""
        results: list[PhotoResult | None] = []
        before, todo = [], []
        for i, (item_id, key, version) in enumerate(zip(ok["item_id"], ok["image_key"], ok["image_version"])):
            photo = earlier.get(item_id)
            if photo is not None and (photo.image_key != key or not photo.source.startswith(self.work.norm + "|")):
                photo = None
            before.append(photo)
            rejected = self.quarantine.image_rejects.get(item_id)
            if rejected is not None and rejected[0] == key:  # rejected for the snapshot tonight
                results.append(PhotoResult(reason=rejected[1]))
            elif photo is not None and (photo.checked or version is not None) and \
                    (version is None or photo.identity == f"version:{version}"):
                results.append(PhotoResult(photo, unchanged=True))  # in tonight's snapshot, or the source says so
            else:
                results.append(None)
                known = photo.identity if photo is not None and not photo.identity.startswith("version:") else None
                todo.append((i, PhotoTask(key, known, version)))
        fetched = self.decoders.map(self.work, [task for _, task in todo])
        for (i, _), result in zip(todo, fetched):
            results[i] = PhotoResult(before[i], unchanged=True) if result.unchanged else result
        self.counts.quarantined += sum(result.reason is not None for result in fetched)
        return results

    def _table(self, rows: pd.DataFrame, kept: list[photos.Photo]) -> pa.Table:
        records = {f.name: rows[f.name].tolist() for f in schemas.LISTING_FIELDS}
        records["ds"] = [self.ds] * len(rows)
        records["price"] = [None if p is None or pd.isna(p) else float(p) for p in records["price"]]
        for name, attr in (("image", "jpeg"), ("image_width", "width"), ("image_height", "height"),
                           ("image_sha256", "sha256"), ("image_source", "source")):
            records[name] = [getattr(photo, attr) for photo in kept]
        return pa.Table.from_pydict(records, schema=schemas.ITEMS)


def run_extract(cfg: Config, ds: str) -> dict[str, str]:
    """Extract the ds's partitions into the work area; returns {output name: URI}."""
    wh = Warehouse.of(cfg)
    wh.work(ds, photos.MARKER).unlink(missing_ok=True)  # from here until the end the outputs are incomplete
    sql_dir = Path(cfg.source.extract_sql) if cfg.source.extract_sql else sql_path("extract")
    start, end = window(ds, cfg.window_days)
    params = {"window_start": start, "window_end": end}
    listing_columns = [f.name for f in schemas.LISTING_FIELDS]
    optional = optional_columns(cfg.source.url, "listings", schemas.LISTINGS_OPTIONAL)
    staging = wh.fresh_work(ds, "_staging")  # normalised source rows, before the dedup (removed at the end)
    try:
        tallies = {"listings of the window": Tally(), "catalogue listings": Tally(), "events": Tally()}
        for tally, template, staged in ((tallies["listings of the window"], "listings_window.sql", "window"),
                                        (tallies["catalogue listings"], "catalog.sql", "catalog")):
            tally.total = stage_listings(stream_source(cfg.source.url, template, params, sql_dir,
                                                       expected=listing_columns, optional=optional),
                                         staging / f"{staged}.parquet")
        if tallies["listings of the window"].total == 0:
            raise ExtractError(f"no listings created in [{start}, {end}): check source.url "
                               f"({redact_url(cfg.source.url)}) and the ds ({ds}); window_days is {cfg.window_days}")
        outputs = {name: wh.fresh_work(ds, name) for name in ("listings_snapshot", "catalog", "quarantine",
                                                               "interactions")}
        earlier_ds, files = photos.earlier_photos(wh, ds)
        earlier = photos.EarlierPhotos(files)
        counts = PhotoCounts()
        quarantine = Quarantine(outputs["quarantine"], ds)
        try:
            staged = tallies["listings of the window"].total + tallies["catalogue listings"].total
            with decoders_for(cfg, ds, staged, staging) as decoders:
                items = ItemWriter(ds, PhotoWork.of(cfg), decoders, quarantine, counts)
                n_snapshot = items.write(latest_listings(staging / "window.parquet", CHUNK_ROWS, staging),
                                         outputs["listings_snapshot"], earlier, tallies["listings of the window"])
                faults.point("extract.mid_write")
                tonight = photos.EarlierPhotos(files, checked=[outputs["listings_snapshot"] / "part-0.parquet"])
                n_catalog = items.write(latest_listings(staging / "catalog.parquet", CHUNK_ROWS, staging),
                                        outputs["catalog"], tonight, tallies["catalogue listings"])
            events = write_events(cfg, sql_dir, ds, end, outputs["interactions"], tallies["events"], quarantine, wh)
        finally:
            quarantine.close()
        try:
            check_quarantine_share(ds, tallies, cfg.extract.max_quarantine_share)
            if n_snapshot == 0:
                raise ExtractError(f"no usable listings created in [{start}, {end}): all "
                                   f"{tallies['listings of the window'].total} were rejected (see the quarantine "
                                   f"at {outputs['quarantine']})")
        except ExtractError:
            for name in ("listings_snapshot", "catalog", "interactions"):  # later stages must not run on them
                shutil.rmtree(outputs[name], ignore_errors=True)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary = {"ds": ds, "snapshot_rows": n_snapshot, "catalog_rows": n_catalog, **events,
               "quarantined": {name: t.rejected for name, t in tallies.items()},
               "photos": asdict(counts), "photos_reused_from": earlier_ds}
    photos.write_marker(wh, ds, summary)
    log.info("extract %s: snapshot %d rows, catalogue %d rows, %d events (%d reused%s); photos: %d reused%s, %d "
             "fetched and decoded, %d quarantined; %d events quarantined", ds, n_snapshot, n_catalog,
             events["events"], events["events_reused"],
             f" from ds={events['events_reused_from']}" if events["events_reused_from"] else "",
             counts.reused, f" (from ds={earlier_ds})" if earlier_ds else "", counts.fetched, counts.quarantined,
             tallies["events"].rejected)
    return {name: str(path) for name, path in outputs.items()}
