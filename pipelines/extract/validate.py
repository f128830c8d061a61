"""Validation: every row the source can hand us is kept (normalised) or rejected with a reason.

Listings are validated in two passes so that memory does not grow with the source: each chunk
read is normalised (``normalise_listings``) and staged to Parquet; DuckDB keeps the latest row per
item (``sql/staging/latest_listing.sql``, an external sort within ``STAGING_MEMORY``) and hands
them back in item_id order, chunk by chunk, to ``reject_listings``. Events need no dedup and are
validated chunk by chunk (``validate_events``). ``validate_listings`` is the three steps on one
frame.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lookalike import schemas
from lookalike.resources import sql_path
from lookalike.extract.images import MAX_KEY_CHARS
from lookalike.extract.source import ExtractError

STATUSES = {"on_sale", "sold", "deleted"}
STAGING_MEMORY = "256MB"  # DuckDB's limit while it sorts the staged listings; it spills to disk beyond
STAGED_LISTINGS = pa.schema(
    [pa.field(f.name, pa.float64() if f.name == "price" else pa.string()) for f in schemas.LISTING_FIELDS]
    + [pa.field("image_version", pa.string()), pa.field("reject_price", pa.string()),
       pa.field("reject_created_at", pa.string()), pa.field("reject_updated_at", pa.string()),
       pa.field("_seq", pa.int64())])


class QuarantineShareExceeded(ExtractError):
    """Too many rows of the ds were rejected to publish it (``extract.max_quarantine_share``)."""


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
    if type(value) is str and value.isascii():  # most values of a real source: already valid
        return value
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
    if (type(value) is str and len(value) <= limit and value.isascii() and value.isprintable()
            and "  " not in value and value[:1] != " " and value[-1:] != " "):
        return value  # printable ASCII, single spaces, no space at the ends: nothing to clean
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


def normalise_listings(frame: pd.DataFrame) -> pd.DataFrame:
    """Every column normalised, with the reason each field breaks the contract (``reject_*``
    columns, None when it does not); rows are neither dropped nor reordered."""
    frame = frame.copy()
    for name in ("item_id", "status", "image_key"):
        frame[name] = frame[name].map(as_text).astype(object)
    # An optional column: the source's own version of the photo (docs/pipeline.md, "Source contract").
    frame["image_version"] = frame["image_version"].map(as_text).astype(object) \
        if "image_version" in frame else pd.Series([None] * len(frame), index=frame.index, dtype=object)
    for name in schemas.LISTINGS_OPTIONAL:  # a frame from a source without them (the templates render NULL)
        if name not in frame:
            frame[name] = pd.Series([None] * len(frame), index=frame.index, dtype=object)
    for name in ("title", "description", "category", "brand", "seller_id", *schemas.LISTINGS_OPTIONAL):
        limit = MAX_TEXT_CHARS.get(name, MAX_OTHER_CHARS)
        frame[name] = frame[name].map(lambda v, limit=limit: clean_text(v, limit)).astype(object)
    prices = frame["price"].map(parse_price)
    frame["price"] = pd.Series([p for p, _ in prices], index=frame.index, dtype=object)  # None stays None
    frame["reject_price"] = pd.Series([r for _, r in prices], index=frame.index, dtype=object)
    for name in ("created_at", "updated_at"):
        parsed = frame[name].map(parse_timestamp)
        frame[name] = pd.Series([t for t, _ in parsed], index=frame.index, dtype=object)
        frame[f"reject_{name}"] = pd.Series([r for _, r in parsed], index=frame.index, dtype=object)
    return frame


def reject_listings(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """The latest row per item (normalised): (the rows that keep the contract, the rejects with one
    reason each)."""
    ids = frame["item_id"]
    return _reject_first(frame.reset_index(drop=True), [
        (ids.isna() | (ids == ""), lambda row: "missing item_id"),
        (ids.str.len() > MAX_ID_CHARS, lambda row: f"item_id longer than {MAX_ID_CHARS} characters"),
        (ids.str.contains(_CONTROL, na=False), lambda row: "item_id contains control characters"),
        (~frame["status"].isin(STATUSES), lambda row: f"unknown status {row.status!r}"),
        (frame["title"].isna(), lambda row: "missing title"),  # an empty one is allowed: a photo-only listing
        (frame["reject_price"].notna(), lambda row: row.reject_price),
        (frame["reject_created_at"].notna(), lambda row: f"created_at {row.reject_created_at}"),
        (frame["reject_updated_at"].notna(), lambda row: f"updated_at {row.reject_updated_at}"),
    ])


def staged_table(frame: pd.DataFrame, first_seq: int) -> pa.Table:
    """A normalised chunk in the staging schema, its rows numbered from ``first_seq`` in source order."""
    columns = {f.name: frame[f.name].tolist() for f in STAGED_LISTINGS if f.name != "_seq"}
    columns["price"] = [None if p is None or (isinstance(p, float) and math.isnan(p)) else float(p)
                        for p in columns["price"]]
    columns["_seq"] = list(range(first_seq, first_seq + len(frame)))
    return pa.Table.from_pydict(columns, schema=STAGED_LISTINGS)


def stage_listings(chunks: Iterable[pd.DataFrame], path: Path) -> int:
    """Normalise the source's chunks into one staging Parquet file; returns the rows read."""
    rows = 0
    with pq.ParquetWriter(path, STAGED_LISTINGS, compression="zstd") as writer:
        for chunk in chunks:
            writer.write_table(staged_table(normalise_listings(chunk), rows))
            rows += len(chunk)
    return rows


def latest_listings(staged: pa.Table | Path, batch_rows: int, spill: Path | None = None) -> Iterator[pd.DataFrame]:
    """The latest row per item of the staged listings (a table, or a staging file), in item_id
    order, ``batch_rows`` at a time; DuckDB sorts within ``STAGING_MEMORY`` and spills to ``spill``."""
    import duckdb
    import pyarrow.dataset as pds

    settings = {"memory_limit": STAGING_MEMORY, "preserve_insertion_order": False}
    if spill is not None:
        settings["temp_directory"] = str(spill)
    con = duckdb.connect(config=settings)
    try:
        con.register("staged", staged if isinstance(staged, pa.Table) else pds.dataset(str(staged)))
        for batch in con.sql(sql_path("staging", "latest_listing.sql").read_text()).to_arrow_reader(batch_rows):
            yield _object_frame(batch)
    finally:
        con.close()


def _object_frame(batch: pa.RecordBatch) -> pd.DataFrame:
    """Arrow → pandas with None (not NaN) for missing values, as the normalised frames hold them."""
    return pd.DataFrame({name: pd.Series(batch.column(name).to_pylist(), dtype=object) for name in batch.schema.names})


def validate_listings(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """One frame through the three steps: normalise, keep the latest row per item, reject."""
    staged = staged_table(normalise_listings(frame), 0)
    kept, rejects = [], []
    for batch in latest_listings(staged, max(1, len(frame))):
        ok, bad = reject_listings(batch)
        kept.append(ok)
        rejects += bad
    return pd.concat(kept, ignore_index=True), rejects


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
    for name in ("user_id", "session_id", "event", "item_id", "source_item_id", "experiment", "variant"):
        frame[name] = frame[name].map(as_text).astype(object) if name in frame else None
    parsed = frame["ts"].map(parse_timestamp)
    frame["ts"] = [t for t, _ in parsed]
    frame["reject_ts"] = pd.Series([r for _, r in parsed], index=frame.index, dtype=object)
    return _reject_first(frame, [
        (frame["user_id"].isna() | (frame["user_id"] == ""), lambda row: "event without user_id"),
        (frame["item_id"].isna() | (frame["item_id"] == ""), lambda row: "event without item_id"),
        (~frame["event"].isin(EVENTS), lambda row: f"unknown event type {row.event!r}"),
        (frame["reject_ts"].notna(), lambda row: f"event ts {row.reject_ts}"),
    ])


@dataclass
class Tally:
    """Rows read from one input and the reasons of those rejected (kinds only: memory stays small)."""
    total: int = 0
    rejected: int = 0
    reasons: Counter = field(default_factory=Counter)

    def reject(self, rejects: list[dict]) -> None:
        self.rejected += len(rejects)
        self.reasons.update(_reason_kind(r["reason"]) for r in rejects)


def check_quarantine_share(ds: str, tallies: dict[str, Tally], limit: float) -> None:
    """Fail the ds when more than ``limit`` of the rows of any input were rejected, naming the top
    reasons: a broken image bucket must not become a catalogue with half its items missing."""
    for name, tally in tallies.items():
        share = tally.rejected / tally.total if tally.total else 0.0
        if share > limit:
            raise QuarantineShareExceeded(
                f"extract {ds}: {tally.rejected} of {tally.total} {name} ({share:.1%}) were rejected, above "
                f"extract.max_quarantine_share={limit:.1%}; top reasons: "
                + "; ".join(f"{reason} ({n})" for reason, n in tally.reasons.most_common(3))
                + ". Nothing was published for this ds; fix the source (or raise the limit) and rerun.")


def _reason_kind(reason: str) -> str:
    """A reason without the row's own detail: 'image file not found: a/b.jpg' → 'image file not found'."""
    return reason.split(":", 1)[0]
