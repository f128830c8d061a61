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
deduplicated through a staging file (:mod:`.validate`), and photos are fetched, decoded and
written a chunk at a time. A photo normalised on an earlier night is reused unless its object
changed (:mod:`.photos`), so a night's cost follows what changed.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import multiprocessing
import os
import sys
import types
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lookalike import faults, schemas
from lookalike.config import Config, redact_url
from lookalike.extract import photos
from lookalike.extract.images import fetch_image, forget_store_layout, prepare_image
from lookalike.extract.source import (SOURCE_CHUNK_ROWS, ExtractError, optional_columns, stream_source,
                                     template_text)
from lookalike.extract.validate import (QuarantineShareExceeded, Tally, check_quarantine_share, latest_listings,
                                        reject_listings, stage_listings, validate_events)
from lookalike.resources import sql_path
from lookalike.storage import Warehouse

log = logging.getLogger(__name__)

__all__ = ["ExtractError", "QuarantineShareExceeded", "run_extract", "window"]

CHUNK_ROWS = 2000  # rows decoded and written per Parquet row group
FETCH_THREADS = 8  # photos fetched at once, by the extract or by one Spark task
SLICE_TASKS = 128  # photos handed to a decode process or a Spark task at a time
THREAD_TASKS = 64  # photos handed to a fetch thread at a time (fewer when there are few)
# Fewer photos of a chunk to fetch than this are decoded on the fetch threads even with decode
# processes: a night that changed a few percent never pays for starting them.
PROCESS_MIN_PHOTOS = 256


def window(ds: str, days: int) -> tuple[str, str]:
    """ISO bounds of [ds - days, ds) as bound parameters (midnight UTC)."""
    end = date.fromisoformat(ds)
    start = end - timedelta(days=days)
    return f"{start.isoformat()}T00:00:00", f"{end.isoformat()}T00:00:00"


@dataclass
class PhotoCounts:
    reused: int = 0  # normalised on an earlier night (or for the snapshot tonight) and unchanged
    fetched: int = 0  # read from the image store and decoded
    quarantined: int = 0  # rejected: missing, unreadable or not a usable image


class Quarantine:
    """The ds's rejected rows, streamed to ``quarantine/part-0.parquet``; an item rejected for the
    snapshot and again for the catalogue is written once."""

    def __init__(self, out: Path, ds: str):
        self.ds = ds
        self._writer = pq.ParquetWriter(out / "part-0.parquet", schemas.QUARANTINE, compression="zstd")
        self.image_rejects: dict[str, tuple[str, str]] = {}  # item_id → (image_key, reason), rejects only
        self._seen: set[tuple[str, str]] = set()

    def add(self, rejects: list[dict], dedupe: bool = False) -> None:
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


def _photo_tasks(ok: pd.DataFrame, earlier: photos.EarlierPhotos, norm: str) -> list[tuple]:
    """Per row, in item_id order: (image_key, the earlier photo that may be reused or None, the
    identity to hand the store (None: read it), the source's image_version or None)."""
    tasks = []
    for item_id, key, version in zip(ok["item_id"], ok["image_key"], ok["image_version"]):
        photo = earlier.get(item_id)
        if photo is not None and (photo.image_key != key or not photo.source.startswith(norm + "|")):
            photo = None
        known = photo.identity if photo is not None and not photo.identity.startswith("version:") else None
        tasks.append((key, photo, known, version))
    return tasks


@dataclass(frozen=True)
class PhotoWork:
    """Fetching and normalising photos: what it needs, picklable, so that it runs the same in
    this process, in decode processes and in Spark tasks. A task is (image_key, the identity
    known from an earlier night or None, image_version or None); its result is ("unchanged",
    None), ("photo", Photo) or ("reject", reason). ``fetch`` is the I/O (a stat or a conditional
    GET for a photo seen before), ``decode`` the CPU work, ``one`` both."""

    images: str
    max_bytes: int
    size: int
    max_pixels: int
    min_side: int
    norm: str

    @classmethod
    def of(cls, cfg: Config) -> "PhotoWork":
        ex = cfg.extract
        return cls(cfg.source.images, ex.max_image_bytes, ex.image_size, ex.max_image_pixels, ex.min_image_side,
                   photos.normalisation(ex))

    def unchanged(self, tasks: list[tuple]) -> list[bool]:
        """Per task, whether a directory store still holds the object known from an earlier night,
        checked in this thread: a stat is quicker done here than handed to threads that then
        queue for the GIL (an S3 store's conditional GETs go to the threads instead)."""
        if self.images.startswith("s3://"):
            return [False] * len(tasks)
        return [known is not None and fetch_image(self.images, key, self.max_bytes, known, read=False).unchanged
                for key, known, _ in tasks]

    def fetch(self, task: tuple) -> tuple:
        """("unchanged", None), ("reject", reason), or ("data", (key, bytes, identity)) to decode."""
        key, known, version = task
        fetched = fetch_image(self.images, key, self.max_bytes, known)
        if fetched.reason:
            return "reject", fetched.reason
        if fetched.unchanged:
            return "unchanged", None
        return "data", (key, fetched.data, f"version:{version}" if version is not None else fetched.identity)

    def decode(self, item: tuple) -> tuple[str, object]:
        key, data, identity = item
        prepared = prepare_image(data, size=self.size, max_pixels=self.max_pixels, min_side=self.min_side)
        if prepared.reason:
            return "reject", prepared.reason
        return "photo", photos.Photo(key, f"{self.norm}|{identity}", prepared.jpeg, prepared.width, prepared.height,
                                     prepared.sha256)

    def decode_all(self, items: list[tuple]) -> list[tuple[str, object]]:
        return [self.decode(item) for item in items]

    def fetch_all(self, tasks: list[tuple]) -> list[tuple]:
        return [self.fetch(task) for task in tasks]

    def one(self, task: tuple) -> tuple[str, object]:
        kind, value = self.fetch(task)
        return self.decode(value) if kind == "data" else (kind, value)

    def all(self, tasks: list[tuple]) -> list[tuple[str, object]]:
        return [self.one(task) for task in tasks]

    def __call__(self, tasks: list[tuple]) -> list[tuple[str, object]]:
        """A slice of tasks, fetched by FETCH_THREADS threads (a Spark task's body)."""
        with ThreadPoolExecutor(FETCH_THREADS) as pool:
            return settled(self, tasks, lambda rest: threaded(pool, self.all, rest))


def settled(work: PhotoWork, tasks: list[tuple], rest) -> list[tuple[str, object]]:
    """The results of ``tasks``: those whose object is unchanged settled here (``PhotoWork.unchanged``),
    the rest by ``rest`` (a list of tasks → their results)."""
    same = work.unchanged(tasks)
    todo = [i for i, s in enumerate(same) if not s]
    results: list = [("unchanged", None)] * len(tasks)
    for i, result in zip(todo, rest([tasks[i] for i in todo])):
        results[i] = result
    return results


def threaded(pool: ThreadPoolExecutor, body, tasks: list) -> list:
    """``body`` (a list of tasks → a list of results) over ``tasks`` on ``pool``'s threads, a few
    dozen tasks per call: most tasks of a night are a stat or a conditional GET, too short to be
    worth a future each."""
    size = max(1, min(THREAD_TASKS, -(-len(tasks) // (4 * FETCH_THREADS))))
    return [r for part in pool.map(body, [tasks[i:i + size] for i in range(0, len(tasks), size)]) for r in part]


class Decoders:
    """Where photos are fetched and decoded. Fetching is I/O and runs on FETCH_THREADS threads of
    this process (an object store answers in milliseconds; an unchanged photo costs only that).
    Decoding runs on those threads too (Pillow releases the GIL while it decodes and encodes), or,
    with ``extract.decode_processes`` other than 1 and at least PROCESS_MIN_PHOTOS photos of a
    chunk to fetch, in that many processes (0: one per core), spawned rather than forked so that
    nothing of this one (an S3 client, a database connection) is shared with them, started when
    first needed and killed with it."""

    def __init__(self, processes: int):
        self.processes = processes or os.cpu_count() or 1
        forget_store_layout()
        self._threads = ThreadPoolExecutor(FETCH_THREADS)
        self._pool = None
        if self.processes > 1:
            from lookalike.processes import die_with_parent

            self._pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=die_with_parent, initargs=(os.getpid(),))

    def map(self, work: PhotoWork, tasks: list[tuple]) -> list[tuple[str, object]]:
        return settled(work, tasks, lambda rest: self._fetch_and_decode(work, rest))

    def _fetch_and_decode(self, work: PhotoWork, tasks: list[tuple]) -> list[tuple[str, object]]:
        if self._pool is None or len(tasks) < PROCESS_MIN_PHOTOS:
            return threaded(self._threads, work.all, tasks)
        results = threaded(self._threads, work.fetch_all, tasks)
        todo = [i for i, (kind, _) in enumerate(results) if kind == "data"]
        size = max(1, min(SLICE_TASKS, -(-len(todo) // self.processes)))
        slices = [[results[i][1] for i in todo[k:k + size]] for k in range(0, len(todo), size)]
        with _children_skip_main():  # the pool spawns its processes as work is submitted
            decoded = self._pool.map(work.decode_all, slices)
        for i, photo in zip(todo, (r for part in decoded for r in part)):
            results[i] = photo
        return results

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._threads.shutdown(cancel_futures=True)
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
        return False


@contextlib.contextmanager
def _children_skip_main():
    """A process spawned now does not import this process's ``__main__`` first, as
    ``multiprocessing`` otherwise makes it do. Inside an Airflow task ``__main__`` is Airflow's
    own entry point, which fails to import in a child (the task's environment points the
    metadata database at a blocked URL), and every decode process died with it. The decode
    processes need nothing from ``__main__``."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


class SparkDecoders:
    """``Decoders.map`` as Spark tasks on ``spark.master``: each slice of photos one task, the
    photos collected back in order (a catalogue of millions decodes on the cluster's cores; the
    rest of the extract, a stream of chunks, stays here)."""

    def __init__(self, cfg: Config, ds: str, folder: Path):
        from lookalike.spark import ship_package, spark_session

        self.spark = spark_session(cfg, app_name=f"lookalike-extract-{ds}")
        ship_package(self.spark, cfg, folder)

    def map(self, work: PhotoWork, tasks: list[tuple]) -> list[tuple[str, object]]:
        if not tasks:
            return []
        slices = [tasks[i:i + SLICE_TASKS] for i in range(0, len(tasks), SLICE_TASKS)]
        return [r for part in self.spark.sparkContext.parallelize(slices, len(slices)).map(work).collect()
                for r in part]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _decoders(cfg: Config, ds: str, rows: int, folder: Path) -> Decoders | SparkDecoders:
    spark_min = cfg.extract.spark_min_rows
    if spark_min > 0 and rows >= spark_min:
        log.info("extract %s: %d listings staged (extract.spark_min_rows %d): photos fetched and decoded on Spark (%s)",
                 ds, rows, spark_min, cfg.spark.master)
        return SparkDecoders(cfg, ds, folder)
    return Decoders(cfg.extract.decode_processes)


def _write_items(batches, ds: str, out: Path, cfg: Config, decoders: Decoders | SparkDecoders,
                 earlier: photos.EarlierPhotos, tally: Tally, quarantine: Quarantine, counts: PhotoCounts,
                 catalogue: bool) -> int:
    """The latest listing rows (item_id order) → rejects to the quarantine, photos reused or
    fetched and decoded, usable rows streamed into ``out/part-0.parquet``; returns the rows kept."""
    work = PhotoWork.of(cfg)
    writer = pq.ParquetWriter(out / "part-0.parquet", schemas.ITEMS, compression="zstd")
    kept = done = 0
    try:
        for frame in batches:
            ok, rejects = reject_listings(frame)
            tally.reject(rejects)
            quarantine.add(rejects, dedupe=catalogue)
            done += len(frame)
            if ok.empty:
                continue
            tasks = _photo_tasks(ok, earlier, work.norm)
            results: list = [None] * len(tasks)
            todo = []
            for i, ((key, photo, _, version), item_id) in enumerate(zip(tasks, ok["item_id"])):
                rejected = quarantine.image_rejects.get(item_id) if catalogue else None
                if rejected is not None and rejected[0] == key:  # rejected for the snapshot tonight
                    results[i] = (None, rejected[1], False)
                elif photo is not None and (photo.checked or version is not None) and \
                        (version is None or photo.identity == f"version:{version}"):
                    results[i] = (photo, None, True)  # in tonight's snapshot, or the source says it is the same
                else:
                    todo.append(i)
            fetched = decoders.map(work, [(tasks[i][0], tasks[i][2], tasks[i][3]) for i in todo])
            for i, (kind, value) in zip(todo, fetched):
                results[i] = {"unchanged": (tasks[i][1], None, True), "photo": (value, None, False),
                              "reject": (None, value, False)}[kind]
            counts.quarantined += sum(results[i][1] is not None for i in todo)  # not those carried from the snapshot
            good, image_rejects = [], []
            for i, (photo, reason, reused) in enumerate(results):
                if reason:
                    row = {"item_id": ok.at[i, "item_id"], "reason": reason, "image_key": ok.at[i, "image_key"]}
                    image_rejects.append(row)
                    if not catalogue:
                        quarantine.image_rejects[row["item_id"]] = (row["image_key"], reason)
                    continue
                counts.reused += reused
                counts.fetched += not reused
                good.append((i, photo))
            tally.reject(image_rejects)
            quarantine.add(image_rejects, dedupe=catalogue)
            rows = ok.iloc[[i for i, _ in good]]
            records = {f.name: rows[f.name].tolist() for f in schemas.LISTING_FIELDS}
            records["ds"] = [ds] * len(rows)
            records["price"] = [None if p is None or pd.isna(p) else float(p) for p in records["price"]]
            for name, attr in (("image", "jpeg"), ("image_width", "width"), ("image_height", "height"),
                               ("image_sha256", "sha256"), ("image_source", "source")):
                records[name] = [getattr(photo, attr) for _, photo in good]
            writer.write_table(pa.Table.from_pydict(records, schema=schemas.ITEMS))
            kept += len(rows)
            log.info("extract: %s: %d rows done (%d photos reused, %d fetched, %d quarantined so far)",
                     out.name, done, counts.reused, counts.fetched, counts.quarantined)
    finally:
        writer.close()
    return kept


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
            with _decoders(cfg, ds, staged, staging) as decoders:
                n_snapshot = _write_items(latest_listings(staging / "window.parquet", CHUNK_ROWS, staging), ds,
                                          outputs["listings_snapshot"], cfg, decoders, earlier,
                                          tallies["listings of the window"], quarantine, counts, catalogue=False)
                faults.point("extract.mid_write")
                tonight = photos.EarlierPhotos(files, checked=[outputs["listings_snapshot"] / "part-0.parquet"])
                n_catalog = _write_items(latest_listings(staging / "catalog.parquet", CHUNK_ROWS, staging), ds,
                                         outputs["catalog"], cfg, decoders, tonight, tallies["catalogue listings"],
                                         quarantine, counts, catalogue=True)
            events = _write_events(cfg, sql_dir, ds, end, outputs["interactions"], tallies["events"], quarantine, wh)
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


def events_fingerprint(url: str, sql_dir: Path, optional: dict[str, str]) -> str:
    """What the event log was read with: the source (without its password) and the template as
    rendered (with or without the optional columns); an earlier night's events are reused only
    when it is the same."""
    text = redact_url(url) + "\n" + template_text("interactions.sql", sql_dir, optional)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def reusable_events(wh: Warehouse, ds: str, log_start: str, fingerprint: str,
                    refetch_days: int) -> tuple[str, Path, str] | None:
    """(earlier ds, its interactions file, cutoff): the earlier night's events with ts in
    [log_start, cutoff) are tonight's too and are reused; the source is read from the cutoff on.
    None when there is nothing to reuse: a first night, a backfill before every finished extract,
    another source or template, an earlier log window that starts later than tonight's."""
    earlier = photos.earlier_extract(wh.work_root, ds)
    if earlier is None or earlier > ds:
        return None
    marker = photos.read_marker(wh, earlier) or {}
    window_start = (marker.get("events_window") or [None])[0]
    if marker.get("events_source") != fingerprint or window_start is None or window_start > log_start:
        return None
    cutoff, _ = window(earlier, refetch_days)
    path = wh.work(earlier, "interactions") / "part-0.parquet"
    if cutoff <= log_start or not path.exists():
        return None
    if not set(schemas.INTERACTIONS.names) <= set(pq.read_schema(path).names):  # written by an older release
        return None
    return earlier, path, cutoff


def _write_events(cfg: Config, sql_dir: Path, ds: str, end: str, out: Path, tally: Tally,
                  quarantine: Quarantine, wh: Warehouse) -> dict:
    """The event log of [log_start, end) into ``out/part-0.parquet``: the settled part reused from
    the earlier night's extract (:func:`reusable_events`), the rest streamed from the source and
    validated chunk by chunk. Returns the counts and the window for the marker."""
    import pyarrow.compute as pc

    log_start, _ = window(ds, max(cfg.evaluate.log_days, cfg.userrec.log_days))
    optional = optional_columns(cfg.source.url, "interactions", schemas.INTERACTIONS_OPTIONAL)
    fingerprint = events_fingerprint(cfg.source.url, sql_dir, optional)
    reuse = reusable_events(wh, ds, log_start, fingerprint, cfg.extract.events_refetch_days)
    columns = [f.name for f in schemas.INTERACTIONS]
    counts = {"events": 0, "events_reused": 0, "events_reused_from": None, "events_window": [log_start, end],
              "events_source": fingerprint}
    fetch_start = log_start
    with pq.ParquetWriter(out / "part-0.parquet", schemas.INTERACTIONS, compression="zstd") as writer:
        if reuse is not None:
            earlier, path, fetch_start = reuse
            for batch in pq.ParquetFile(path).iter_batches(batch_size=SOURCE_CHUNK_ROWS, columns=columns):
                ts = batch.column("ts")
                kept = batch.filter(pc.and_(pc.greater_equal(ts, log_start), pc.less(ts, fetch_start)))
                writer.write_batch(kept)
                counts["events_reused"] += kept.num_rows
            counts["events_reused_from"] = earlier
        for chunk in stream_source(cfg.source.url, "interactions.sql", {"window_start": fetch_start,
                                                                         "window_end": end}, sql_dir,
                                   expected=columns, optional=optional):
            tally.total += len(chunk)
            events, rejects = validate_events(chunk)
            tally.reject(rejects)
            quarantine.add(rejects)
            writer.write_table(pa.Table.from_pandas(events[columns], schema=schemas.INTERACTIONS, preserve_index=False))
            counts["events"] += len(events)
    counts["events"] += counts["events_reused"]
    return counts
