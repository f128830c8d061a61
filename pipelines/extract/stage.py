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
import math
import re
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from pipelines import faults, schemas
from pipelines.config import Config, redact_url
from pipelines.errors import LookalikeError, TransientError
from pipelines.extract.images import MAX_KEY_CHARS, prepare_image, read_image_bytes
from pipelines.storage import Warehouse

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parents[2] / "sql" / "extract"
STATUSES = {"on_sale", "sold", "deleted"}
CHUNK_ROWS = 2000  # rows decoded and written per Parquet row group


class ExtractError(LookalikeError):
    """The source cannot be read as the contract says; the message names the table or column."""


class QuarantineShareExceeded(ExtractError):
    """Too many rows of the ds were rejected to publish it (``extract.max_quarantine_share``)."""


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
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        if url.startswith("sqlite"):  # SQLite reports a missing table as an OperationalError
            raise _contract_error(path, engine, exc) from None
        raise TransientError(f"the source {engine.url.render_as_string(hide_password=True)} could not be reached "
                             f"or dropped the connection: {str(exc.orig or exc).splitlines()[0]}") from None
    except sa.exc.SQLAlchemyError as exc:
        raise _contract_error(path, engine, exc) from None
    finally:
        engine.dispose()
    for col in ("created_at", "updated_at", "ts"):
        if col in frame:
            frame[col] = frame[col].map(_iso_text)
    return frame


def _contract_error(path: Path, engine, exc: Exception) -> ExtractError:
    """The query ran but the source does not look like the contract (or the URL is wrong)."""
    return ExtractError(f"query {path.name} failed against {engine.url.render_as_string(hide_password=True)}: "
                        f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}. Check source.url and that the "
                        f"tables follow the source contract (README, 'Source contract').")


# ---- validation: every row the source can hand us is kept (normalised) or rejected with a reason ----

EVENTS = {"impression", "view", "click", "purchase"}
MAX_ID_CHARS = 256
MAX_TEXT_CHARS = {"title": 500, "description": 5000}  # longer text is cut (kept, not rejected)
MAX_OTHER_CHARS = 200  # category, brand, seller_id
MAX_PRICE = 1e12
MIN_TIMESTAMP, MAX_TIMESTAMP = datetime(1970, 1, 1), datetime(2200, 1, 1)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]+")  # C0/C1 controls but tab and newline
_SPACES = re.compile(r"\s+")


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value is pd.NaT


def as_text(value) -> str | None:
    """A source value as valid UTF-8 text (bytes decoded, numbers printed, lone surrogates replaced)."""
    if _missing(value):
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).decode("utf-8", "replace")
    elif not isinstance(value, str):
        value = str(value)
    return value.encode("utf-8", "replace").decode("utf-8")


def clean_text(value, limit: int) -> str | None:
    """Text for a title-like column: control characters and runs of whitespace become one space,
    the ends are trimmed, and the result is cut to ``limit`` characters. RTL marks and emoji stay."""
    text = as_text(value)
    if text is None:
        return None
    return _SPACES.sub(" ", _CONTROL.sub(" ", text)).strip()[:limit]


def parse_price(value) -> tuple[float | None, str | None]:
    """(price, None), (None, None) when absent, or (None, reason) for text that is no number or a
    number out of range (negative, not finite, above MAX_PRICE)."""
    if _missing(value):
        return None, None
    if isinstance(value, bool):
        return None, f"price is not a number: {value!r}"
    try:
        price = float(as_text(value).strip()) if not isinstance(value, (int, float)) else float(value)
    except (ValueError, OverflowError):
        return None, f"price is not a number: {as_text(value)[:40]!r}"
    if not math.isfinite(price) or price < 0 or price > MAX_PRICE:
        return None, f"price out of range: {price!r}"
    return price, None


def parse_timestamp(value) -> tuple[str | None, str | None]:
    """ISO ``YYYY-MM-DDTHH:MM:SS`` (UTC; offsets converted), or (None, reason)."""
    if _missing(value):
        return None, "missing"
    if isinstance(value, datetime):
        parsed = value
    else:
        text = as_text(value).strip()
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return None, f"not a timestamp: {text[:40]!r}"
    if parsed.tzinfo is not None:
        try:
            parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
        except OverflowError:
            return None, f"out of range: {parsed.isoformat()}"
    if not MIN_TIMESTAMP <= parsed < MAX_TIMESTAMP:
        return None, f"out of range: {parsed.isoformat()}"
    return parsed.strftime("%Y-%m-%dT%H:%M:%S"), None


def validate_listings(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """Normalise every column, drop duplicate ids (latest update wins) and reject rows that break
    the source contract; returns (ok, rejects with one reason each)."""
    frame = frame.copy()
    for name in ("item_id", "status", "image_key"):
        frame[name] = frame[name].map(as_text).astype(object)
    for name in ("title", "description", "category", "brand", "seller_id"):
        limit = MAX_TEXT_CHARS.get(name, MAX_OTHER_CHARS)
        frame[name] = frame[name].map(lambda v, limit=limit: clean_text(v, limit)).astype(object)
    prices = frame["price"].map(parse_price)
    frame["price"] = pd.Series([p for p, _ in prices], index=frame.index, dtype=object)  # None stays None
    frame["reject_price"] = [r for _, r in prices]
    for name in ("created_at", "updated_at"):
        parsed = frame[name].map(parse_timestamp)
        frame[name] = [t for t, _ in parsed]
        frame[f"reject_{name}"] = [r for _, r in parsed]
    frame = frame.sort_values(["item_id", "updated_at"], kind="stable", na_position="first")
    frame = frame[frame["item_id"].isna() | ~frame.duplicated("item_id", keep="last")]
    ids = frame["item_id"]
    return _reject_first(frame, [
        (ids.isna() | (ids == ""), lambda row: "missing item_id"),
        (ids.str.len() > MAX_ID_CHARS, lambda row: f"item_id longer than {MAX_ID_CHARS} characters"),
        (ids.str.contains(_CONTROL, na=False), lambda row: "item_id contains control characters"),
        (~frame["status"].isin(STATUSES), lambda row: f"unknown status {row.status!r}"),
        (frame["title"].isna(), lambda row: "missing title"),  # an empty one is allowed: a photo-only listing
        (frame["reject_price"].notna(), lambda row: row.reject_price),
        (frame["reject_created_at"].notna(), lambda row: f"created_at {row.reject_created_at}"),
        (frame["reject_updated_at"].notna(), lambda row: f"updated_at {row.reject_updated_at}"),
    ])


def _reject_first(frame: pd.DataFrame, problems: list) -> tuple[pd.DataFrame, list[dict]]:
    """Apply ``problems`` ((mask, reason of a row) pairs) in order, one reason per row: the first that
    applies; returns the rows none applies to (without the ``reject_`` helper columns) and the rejects."""
    rejects: list[dict] = []
    rejected = pd.Series(False, index=frame.index)
    for mask, reason in problems:
        for row in frame[mask & ~rejected].itertuples():
            key = getattr(row, "image_key", None)
            rejects.append({"item_id": None if row.item_id is None else row.item_id[:MAX_ID_CHARS],
                            "reason": reason(row),
                            "image_key": None if key is None else key.replace("\x00", "\\0")[:MAX_KEY_CHARS]})
        rejected |= mask
    kept = frame[~rejected].drop(columns=[c for c in frame.columns if c.startswith("reject_")])
    return kept.reset_index(drop=True), rejects


def validate_events(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """Events with a user, a known event type, an item and a timestamp; the rest rejected with a reason."""
    frame = frame.copy()
    for name in ("user_id", "session_id", "event", "item_id", "source_item_id"):
        frame[name] = frame[name].map(as_text).astype(object)
    parsed = frame["ts"].map(parse_timestamp)
    frame["ts"] = [t for t, _ in parsed]
    frame["reject_ts"] = pd.Series([r for _, r in parsed], index=frame.index, dtype=object)
    return _reject_first(frame, [
        (frame["user_id"].isna() | (frame["user_id"] == ""), lambda row: "event without user_id"),
        (frame["item_id"].isna() | (frame["item_id"] == ""), lambda row: "event without item_id"),
        (~frame["event"].isin(EVENTS), lambda row: f"unknown event type {row.event!r}"),
        (frame["reject_ts"].notna(), lambda row: f"event ts {row.reject_ts}"),
    ])


def check_quarantine_share(ds: str, counts: dict[str, tuple[int, list[dict]]], limit: float) -> None:
    """Fail the ds when more than ``limit`` of the rows of any input were rejected, naming the top
    reasons: a broken image bucket must not become a catalogue with half its items missing."""
    for name, (total, rejects) in counts.items():
        share = len(rejects) / total if total else 0.0
        if share > limit:
            reasons = Counter(_reason_kind(r["reason"]) for r in rejects).most_common(3)
            raise QuarantineShareExceeded(
                f"extract {ds}: {len(rejects)} of {total} {name} ({share:.1%}) were rejected, above "
                f"extract.max_quarantine_share={limit:.1%}; top reasons: "
                + "; ".join(f"{reason} ({n})" for reason, n in reasons)
                + ". Nothing was published for this ds; fix the source (or raise the limit) and rerun.")


def _reason_kind(reason: str) -> str:
    """A reason without the row's own detail: 'image file not found: a/b.jpg' → 'image file not found'."""
    return reason.split(":", 1)[0]


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
    params = {"window_start": start, "window_end": end}
    listings_raw = read_source(cfg.source.url, "listings_window.sql", params, sql_dir)
    catalog_raw = read_source(cfg.source.url, "catalog.sql", params, sql_dir)
    log_start, _ = window(ds, max(cfg.evaluate.log_days, cfg.userrec.log_days))
    events_raw = read_source(cfg.source.url, "interactions.sql", {"window_start": log_start, "window_end": end}, sql_dir)
    _check_columns(listings_raw, "listings_window.sql", [f.name for f in schemas.LISTING_FIELDS])
    _check_columns(catalog_raw, "catalog.sql", [f.name for f in schemas.LISTING_FIELDS])
    _check_columns(events_raw, "interactions.sql", [f.name for f in schemas.INTERACTIONS])
    listings, rejects = validate_listings(listings_raw)
    catalog, cat_rejects = validate_listings(catalog_raw)
    events, event_rejects = validate_events(events_raw)
    if listings.empty:
        raise ExtractError(f"no listings created in [{start}, {end}) ({len(listings_raw)} read, "
                           f"{len(rejects)} rejected): check source.url ({redact_url(cfg.source.url)}) "
                           f"and the ds ({ds}); window_days is {cfg.window_days}")

    outputs = {name: wh.fresh_work(ds, name) for name in ("listings_snapshot", "catalog", "quarantine", "interactions")}
    snapshot_rejects, catalog_rejects = list(rejects), list(cat_rejects)
    with ThreadPoolExecutor() as pool:
        n_snapshot = _write_items(listings, ds, outputs["listings_snapshot"], cfg, pool, snapshot_rejects)
        faults.point("extract.mid_write")
        n_catalog = _write_items(catalog, ds, outputs["catalog"], cfg, pool, catalog_rejects)
    # An item both in the window and on sale is rejected twice for the same reason: keep one row.
    items_rejected = list({(q["item_id"], q["reason"]): q for q in snapshot_rejects + catalog_rejects}.values())
    qtable = pa.Table.from_pylist([{"ds": ds, "stage": "extract", **q} for q in items_rejected + event_rejects],
                                  schema=schemas.QUARANTINE)
    pq.write_table(qtable, outputs["quarantine"] / "part-0.parquet")
    try:
        check_quarantine_share(ds, {"listings of the window": (len(listings_raw), snapshot_rejects),
                                    "catalogue listings": (len(catalog_raw), catalog_rejects),
                                    "events": (len(events_raw), event_rejects)},
                               cfg.extract.max_quarantine_share)
    except QuarantineShareExceeded:
        for name in ("listings_snapshot", "catalog", "interactions"):  # later stages must not run on them
            shutil.rmtree(outputs[name], ignore_errors=True)
        raise
    pq.write_table(pa.Table.from_pandas(events[[f.name for f in schemas.INTERACTIONS]], schema=schemas.INTERACTIONS,
                                        preserve_index=False), outputs["interactions"] / "part-0.parquet")
    log.info("extract %s: snapshot %d rows, catalogue %d rows, quarantined %d listings and %d events, %d events",
             ds, n_snapshot, n_catalog, len(items_rejected), len(event_rejects), len(events))
    return {name: str(path) for name, path in outputs.items()}


def _check_columns(frame: pd.DataFrame, template: str, expected: list[str]) -> None:
    missing = [name for name in expected if name not in frame.columns]
    if missing:
        raise ExtractError(f"the extract template {template} returns no column {', '.join(missing)}: "
                           "every column of the source contract must be selected (NULL where you have none)")
