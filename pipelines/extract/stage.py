"""The extract stage: source database + image store → the ds's snapshot, catalogue and logs.

Outputs, all in the ds's work area (``Warehouse.work``):

- ``listings_snapshot``: listings created in [ds - window_days, ds), deduplicated by item_id
  (latest update wins), with the normalised image and ``image_sha256``;
- ``catalog``: every on_sale listing, the items embedded and offered as neighbours;
- ``quarantine``: every rejected row with its reason (never fatal on its own);
- ``interactions``: the event log of [ds - max(evaluate.log_days, userrec.log_days), ds), for the
  offline evaluation and the user model (each reads its own window of it).
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from pipelines import schemas
from pipelines.config import Config, redact_url
from pipelines.errors import LookalikeError
from pipelines.extract.images import prepare_image, read_image_bytes
from pipelines.storage import Warehouse

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parents[2] / "sql" / "extract"
STATUSES = {"on_sale", "sold", "deleted"}
CHUNK_ROWS = 2000  # rows decoded and written per Parquet row group


class ExtractError(LookalikeError):
    """The source cannot be read as the contract says; the message names the table or column."""


def window(ds: str, days: int) -> tuple[str, str]:
    """ISO bounds of [ds - days, ds) as bound parameters (midnight UTC)."""
    end = date.fromisoformat(ds)
    start = end - timedelta(days=days)
    return f"{start.isoformat()}T00:00:00", f"{end.isoformat()}T00:00:00"


def read_events(wh, ds: str, days: int) -> pa.Table:
    """The ds's extracted interaction log restricted to [ds - days, ds): each reader its own window."""
    import pyarrow.compute as pc

    events = pq.read_table(wh.work(ds, "interactions"), partitioning=None)
    start = (date.fromisoformat(ds) - timedelta(days=days)).isoformat()
    return events.filter(pc.greater_equal(pc.utf8_slice_codeunits(events.column("ts"), 0, 10), start))


def _iso_text(value) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%S")
    return str(value).replace(" ", "T")


def read_source(url: str, template: str, params: dict, sql_dir: Path = SQL_DIR) -> pd.DataFrame:
    """Run one extract template with bound parameters; timestamps come back as ISO text."""
    path = sql_dir / template
    if not path.is_file():
        raise ExtractError(f"extract template {path} not found")
    if url.startswith("sqlite:///"):  # SQLite would silently create an empty database
        db = Path(url.removeprefix("sqlite:///"))
        if not db.is_file():
            raise ExtractError(f"source database {db} does not exist: create the sample with "
                               f"`lookalike sample-data --out {db.parent}` (or `make demo`), or set source.url")
    engine = sa.create_engine(url)
    try:
        with engine.connect() as con:
            result = con.execute(sa.text(path.read_text()), params)
            frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    except sa.exc.SQLAlchemyError as exc:
        raise ExtractError(f"query {path.name} failed against {engine.url.render_as_string(hide_password=True)}: "
                           f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}. Check source.url and that the "
                           f"tables follow the source contract (README, 'Source contract').") from None
    finally:
        engine.dispose()
    for col in ("created_at", "updated_at", "ts"):
        if col in frame:
            frame[col] = frame[col].map(_iso_text)
    return frame


def validate_listings(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """Drop duplicate ids (latest update wins) and rows that break the contract; returns (ok, rejects)."""
    rejects: list[dict] = []
    frame = frame.sort_values(["item_id", "updated_at"], kind="stable")
    frame = frame[~frame.duplicated("item_id", keep="last")]
    problems = [
        (frame["item_id"].isna() | (frame["item_id"].astype(str) == ""), lambda row: "missing item_id"),
        (~frame["status"].isin(STATUSES), lambda row: f"unknown status {row.status!r}"),
        (frame["title"].isna(), lambda row: "missing title"),
    ]
    rejected = pd.Series(False, index=frame.index)
    for mask, reason in problems:
        for row in frame[mask & ~rejected].itertuples():  # one reason per row: the first that applies
            rejects.append({"item_id": row.item_id, "reason": reason(row), "image_key": row.image_key})
        rejected |= mask
    return frame[~rejected].reset_index(drop=True), rejects


def _decode_chunk(frame: pd.DataFrame, cfg: Config, pool: ThreadPoolExecutor) -> list:
    ex = cfg.extract

    def one(key):
        data, reason = read_image_bytes(cfg.source.images, key, ex.max_image_bytes)
        if reason:
            return None, reason
        return prepare_image(data, size=ex.image_size, max_pixels=ex.max_image_pixels, min_side=ex.min_image_side), None

    return list(pool.map(one, frame["image_key"].tolist()))


def _write_items(frame: pd.DataFrame, ds: str, out: Path, cfg: Config, pool, quarantine: list[dict]) -> int:
    """Decode images chunk by chunk and stream the usable rows into ``out/part-0.parquet``."""
    writer = pq.ParquetWriter(out / "part-0.parquet", schemas.ITEMS, compression="zstd")
    kept = 0
    try:
        for start in range(0, max(len(frame), 1), CHUNK_ROWS):
            chunk = frame.iloc[start:start + CHUNK_ROWS].reset_index(drop=True)
            if chunk.empty:
                break
            results = _decode_chunk(chunk, cfg, pool)
            ok = []
            for i, (prepared, reason) in enumerate(results):
                reason = reason or prepared.reason
                if reason:
                    quarantine.append({"item_id": chunk.at[i, "item_id"], "reason": reason,
                                       "image_key": chunk.at[i, "image_key"]})
                    continue
                ok.append(i)
            good = chunk.iloc[ok]
            records = {f.name: good[f.name].tolist() for f in schemas.LISTING_FIELDS}
            records["ds"] = [ds] * len(good)
            records["price"] = [None if pd.isna(p) else float(p) for p in records["price"]]
            records["image"] = [results[i][0].jpeg for i in ok]
            records["image_width"] = [results[i][0].width for i in ok]
            records["image_height"] = [results[i][0].height for i in ok]
            records["image_sha256"] = [results[i][0].sha256 for i in ok]
            writer.write_table(pa.Table.from_pydict(records, schema=schemas.ITEMS))
            kept += len(good)
            log.info("extract: %d/%d rows decoded", start + len(chunk), len(frame))
    finally:
        writer.close()
    return kept


def run_extract(cfg: Config, ds: str) -> dict[str, str]:
    """Extract the ds's partitions into the work area; returns {output name: URI}."""
    wh = Warehouse.of(cfg)
    sql_dir = Path(cfg.source.extract_sql) if cfg.source.extract_sql else SQL_DIR
    start, end = window(ds, cfg.window_days)
    listings, rejects = validate_listings(
        read_source(cfg.source.url, "listings_window.sql", {"window_start": start, "window_end": end}, sql_dir))
    catalog, cat_rejects = validate_listings(
        read_source(cfg.source.url, "catalog.sql", {"window_start": start, "window_end": end}, sql_dir))
    log_start, _ = window(ds, max(cfg.evaluate.log_days, cfg.userrec.log_days))
    events = read_source(cfg.source.url, "interactions.sql", {"window_start": log_start, "window_end": end}, sql_dir)
    if listings.empty:
        raise ExtractError(f"no listings created in [{start}, {end}): check source.url ({redact_url(cfg.source.url)}) "
                           f"and the ds ({ds}); window_days is {cfg.window_days}")

    outputs = {name: wh.fresh_work(ds, name) for name in ("listings_snapshot", "catalog", "quarantine", "interactions")}
    quarantine: list[dict] = rejects + cat_rejects
    with ThreadPoolExecutor() as pool:
        n_snapshot = _write_items(listings, ds, outputs["listings_snapshot"], cfg, pool, quarantine)
        n_catalog = _write_items(catalog, ds, outputs["catalog"], cfg, pool, quarantine)
    # An item both in the window and on sale is rejected twice for the same reason: keep one row.
    quarantine = list({q["item_id"]: q for q in quarantine}.values())
    qtable = pa.Table.from_pylist(
        [{"ds": ds, "stage": "extract", **q} for q in quarantine], schema=schemas.QUARANTINE)
    pq.write_table(qtable, outputs["quarantine"] / "part-0.parquet")
    pq.write_table(pa.Table.from_pandas(events[[f.name for f in schemas.INTERACTIONS]], schema=schemas.INTERACTIONS,
                                        preserve_index=False), outputs["interactions"] / "part-0.parquet")
    log.info("extract %s: snapshot %d rows, catalogue %d rows, quarantined %d, %d events",
             ds, n_snapshot, n_catalog, len(quarantine), len(events))
    return {name: str(path) for name, path in outputs.items()}
