"""The extract's event log: the ds's interactions, the settled part reused from the earlier night's
extract and the rest read from the source, validated chunk by chunk."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lookalike import schemas
from lookalike.config import Config, redact_url
from lookalike.extract import photos
from lookalike.extract.quarantine import Quarantine
from lookalike.extract.source import SOURCE_CHUNK_ROWS, optional_columns, stream_source, template_text, window
from lookalike.extract.validate import Tally, validate_events
from lookalike.storage import Warehouse


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


def write_events(cfg: Config, sql_dir: Path, ds: str, end: str, out: Path, tally: Tally,
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
