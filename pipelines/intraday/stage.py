"""An intraday hour: what changed in the source since the night, applied to the night's lists.

The night builds on everything updated before its ds (00:00 UTC); ``lookalike_intraday`` runs every
hour between nights and, as of its time ``as_of``:

1. ``run_hour``: reads the listings whose ``updated_at`` is in [watermark − ``intraday.lookback``, as_of)
   (``sql/extract/listings_changed.sql``; the watermark is the newest finished hour's ``as_of``, or the
   night's cutoff; the lookback catches rows committed late, and a row read again changes nothing),
   validates them and their photos as the extract does, embeds the new photos with the night's served
   system, merges them into the changes since the night (:mod:`lookalike.intraday.changes`), and updates
   the night's lists with them (``lookalike.neighbors.update.update_neighbors``: the same update a night
   uses, so the lists equal a full search's over the night's catalogue with the changes applied). The
   lists that differ from the night's are written with the hour; ``hour.json`` is written last.
2. ``publish_hour``: checks those lists as the night's are checked and publishes them as the night's
   partition of ``item_neighbors_intraday`` (one manifest switch; each hour replaces the one before).
3. ``handoff_hour``: writes them into each online store's live generation of the night, in one
   transaction (``lookalike.online.handoff.patch_live``).

Everything an hour writes is its own folder under the night's work area (``intraday/<as_of>``), so an
hour killed at any point leaves nothing readable: the next hour starts from the newest *finished* hour's
watermark and catches up on everything since. An hour builds on the newest published night; one that
finishes after a newer night was published is stale and publishes nothing (the next hour applies its
changes on the new night, whose own extract read the source after them or from them on).
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lookalike import faults, schemas, serving
from lookalike.config import Config
from lookalike.texts import TEXT_FIELDS
from lookalike.errors import LookalikeError
from lookalike.extract.source import optional_columns, stream_source
from lookalike.extract.fetch import PhotoTask, PhotoWork
from lookalike.extract.validate import latest_listings, reject_listings, stage_listings
from lookalike.intraday import changes as ch
from lookalike.neighbors.output import ListsCollector, neighbor_table, positions_in
from lookalike.resources import sql_path
from lookalike.atomic import atomic_write_text
from lookalike.storage import Warehouse, write_parquet

log = logging.getLogger(__name__)

TABLE = "item_neighbors_intraday"
MARKER = "hour.json"  # written last in an hour's folder: the hour finished
FORMAT = "%Y-%m-%dT%H:%M:%S"


class StaleHour(LookalikeError):
    """The hour built on a night that is no longer the newest published one."""


@dataclass(frozen=True)
class Night:
    ds: str
    run_id: str  # the run that published its item_neighbors
    cutoff: str  # its listings were read up to here: ds 00:00 UTC
    stats: dict  # its neighbors_stats.json


def as_of_text(value: str | datetime | None = None) -> str:
    """``value`` (ISO text or a datetime; now when None) as the UTC time an hour applies changes up to."""
    if value is None:
        value = datetime.now(timezone.utc)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise LookalikeError(f"as_of {value!r} is not an ISO time (YYYY-MM-DDTHH:MM[:SS], UTC)") from None
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value.strftime(FORMAT)


def served_night(wh: Warehouse) -> Night:
    """The newest published night, whose lists an hour updates; a clear error when none can be."""
    entries = wh.entries("item_neighbors")
    if not entries:
        raise LookalikeError("no night is published yet: an intraday hour updates a published night's lists "
                             "(run lookalike_nightly, or `lookalike run`, first)")
    ds, entry = max(entries.items())
    stats = wh.work(ds, "neighbors_stats.json")
    missing = [name for name in ("neighbor_lists", "item_embeddings", "catalog", "embed_stats.json")
               if not wh.work(ds, name).exists()]
    if missing or not stats.exists():
        lacks = ", ".join(missing) or "its neighbors_stats.json"
        raise LookalikeError(f"the night {ds} is published but its work area lacks {lacks} ({wh.work_root}): the "
                             "hours need the work area the night ran in (work_dir shared by the DAGs' workers)")
    return Night(ds, entry["run_id"], f"{ds}T00:00:00", json.loads(stats.read_text()))


def _folder(wh: Warehouse, night: str, as_of: str) -> Path:
    return wh.work(night, "intraday") / as_of.replace(":", "")


def finished_hours(wh: Warehouse, night: str) -> list[dict]:
    """The finished hours of ``night`` (their ``hour.json``, with ``folder``), oldest first."""
    found = []
    for marker in sorted(wh.work(night, "intraday").glob(f"*/{MARKER}")):
        record = json.loads(marker.read_text())
        found.append({**record, "folder": str(marker.parent)})
    return sorted(found, key=lambda r: r["as_of"])


def run_hour(cfg: Config, as_of: str | None = None) -> dict:
    """Apply what changed in the source before ``as_of`` (now when None) to the newest night's lists."""
    from lookalike.neighbors import update
    from lookalike.neighbors.stage import filter_codes, load_embeddings

    wh = Warehouse.of(cfg)
    as_of = as_of_text(as_of)
    night = served_night(wh)
    if as_of <= night.cutoff:
        log.info("intraday %s: the night %s already holds every change before its cutoff %s: nothing to do",
                 as_of, night.ds, night.cutoff)
        return {"as_of": as_of, "night": night.ds, "skipped": f"before the night's cutoff {night.cutoff}"}
    before = [h for h in finished_hours(wh, night.ds) if h["as_of"] < as_of]
    watermark = before[-1]["as_of"] if before else night.cutoff
    since = lookback(watermark, cfg.intraday.lookback)
    folder = _folder(wh, night.ds, as_of)
    shutil.rmtree(folder, ignore_errors=True)  # left by a killed run of this hour: never read
    folder.mkdir(parents=True)
    timings: dict[str, float] = {}
    started = clock = time.monotonic()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        timings[name] = round(now - clock, 3)
        clock = now

    served = json.loads(wh.work(night.ds, "embed_stats.json").read_text())
    night_ids, night_vectors, version = load_embeddings(wh.work(night.ds, "item_embeddings"))
    template = served.get("text_template")  # the night's system reads titles: a changed text is embedded again
    night_catalog = pq.read_table(wh.work(night.ds, "catalog"),
                                  columns=["item_id", "image_key", "image_source",
                                           *dict.fromkeys([*ch.ATTRIBUTES, *(TEXT_FIELDS if template else ())])])
    earlier = pq.read_table(Path(before[-1]["folder"]) / "changes.parquet") if before else ch.CHANGES.empty_table()
    lap("read_night")

    rows, rejects, read = _changed_listings(cfg, folder, since, as_of)
    lap("extract")
    latest, counts = _with_photos(cfg, rows, rejects, earlier, night_catalog, night_ids, night_vectors, template)
    lap("photos")
    latest, embedded = _embedded(cfg, latest, served, version, night_vectors.shape[1])
    lap("embed")
    faults.point("intraday.before_lists")
    changes = ch.merged(earlier, latest)
    write_parquet(changes, folder / "changes.parquet")

    ids, vectors, catalog = ch.patched(night_ids, night_vectors, night_catalog, changes)
    previous = update.Previous(night.ds, night.stats)  # its embeddings and catalogue are in hand: not read again
    _, fresh, _, kept = update.carry(wh, previous, night_ids, night_vectors, night_catalog, ids, vectors, catalog)
    k = cfg.neighbors.k
    night_top = kept.top_k(k)  # before the update, which changes the kept lists in place
    lists = ListsCollector(len(ids), k + cfg.neighbors.margin)
    codes = filter_codes(ids, catalog)
    stats = update.update_neighbors(vectors, ids, ncfg=cfg.neighbors, on_sale=np.ones(len(ids), bool),
                                    previous=kept, fresh=fresh, writer=None, lists_out=lists, ds=night.ds,
                                    version=version, kept_index=update.load_index(wh.work(night.ds, "neighbor_index")),
                                    **codes)
    lap("lists")
    top = lists.lists.top_k(k)
    earlier_rows = pc.unique(pq.read_table(Path(before[-1]["folder"]) / TABLE, columns=["item_id"])
                             .column("item_id").combine_chunks()) if before else pa.array([], pa.string())
    again = pc.is_in(ids, value_set=earlier_rows).to_numpy(zero_copy_only=False).astype(bool)
    changed = np.flatnonzero(ch.changed_lists(night_top, top, again))
    gone = ch.withdrawn(night_ids, ids)
    table = _rows(night.ds, as_of, version, ids, codes["images"], changed, top, k,
                  pa.concat_arrays([gone, earlier_rows.filter(pc.invert(pc.is_in(earlier_rows, value_set=ids)))]))
    (folder / TABLE).mkdir()
    write_parquet(table, folder / TABLE / "part-0.parquet")
    lap("write")
    record = {"night": night.ds, "night_run_id": night.run_id, "as_of": as_of, "since": since, "watermark": watermark,
              "listings_read": read, "changes_since_night": changes.num_rows, **counts, "embedded": embedded,
              "catalogue": len(ids), "fresh": int(fresh.sum()), "lists_changed": int(len(changed)),
              "lists_withdrawn": int(pc.sum(pc.equal(table.column("rank"), 0)).as_py() or 0),
              "rows": table.num_rows, "model_version": version,
              "neighbors": {key: stats[key] for key in ("index", "recall_at_k", "kept", "fresh", "ran_out", "touched")},
              "seconds": {**timings, "total": round(time.monotonic() - started, 3)}}
    faults.point("intraday.before_marker")
    atomic_write_text(folder / MARKER, json.dumps(record, indent=2))
    log.info("intraday %s on the night %s: %d listings changed in [%s, %s) (%d since the night), %d photos decoded, "
             "%d embedded, %d quarantined; %d lists changed, %d withdrawn; %.1f s", as_of, night.ds, read, since,
             as_of, changes.num_rows, counts["photos_decoded"], embedded, counts["quarantined"], len(changed),
             record["lists_withdrawn"], record["seconds"]["total"])
    return {k_: v for k_, v in record.items() if k_ != "neighbors"} | {"folder": str(folder)}


def lookback(watermark: str, minutes: int) -> str:
    """Where an hour starts reading: ``minutes`` (``intraday.lookback``) before the watermark, so a row
    committed after the last hour read, with an ``updated_at`` before that hour's ``as_of`` (a long
    transaction, replica lag), is still seen. A row read twice merges to the same change."""
    return (datetime.fromisoformat(watermark) - timedelta(minutes=minutes)).strftime(FORMAT)


def _changed_listings(cfg: Config, folder: Path, since: str, until: str) -> tuple[pd.DataFrame, list[dict], int]:
    """(the latest row of each listing updated in [since, until) that keeps the contract, the rejects with
    their reason, the rows read), as the extract validates them."""
    sql_dir = Path(cfg.source.extract_sql) if cfg.source.extract_sql else sql_path("extract")
    optional = optional_columns(cfg.source.url, "listings", schemas.LISTINGS_OPTIONAL)
    staged = folder / "_staged.parquet"
    read = stage_listings(stream_source(cfg.source.url, "listings_changed.sql",
                                        {"changed_since": since, "changed_before": until}, sql_dir,
                                        expected=[f.name for f in schemas.LISTING_FIELDS], optional=optional), staged)
    frames, rejects = [], []
    for frame in latest_listings(staged, 50_000, folder):
        ok, bad = reject_listings(frame)
        frames.append(ok)
        rejects += bad
    staged.unlink()
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*ch.CHANGES.names, "image_version"])
    return rows, rejects, read


def _with_photos(cfg: Config, rows: pd.DataFrame, rejects: list[dict], earlier: pa.Table, night_catalog: pa.Table,
                 night_ids: pa.Array, night_vectors: np.ndarray, template: str | None = None) -> tuple[pa.Table, dict]:
    """The hour's listings as changes: each on-sale one's photo reused (the same object as the night's or an
    earlier hour's: its hash and vector too) or fetched and normalised, or its reason to be left out.
    With a served system that reads titles (``template``), a listing whose text changed is embedded again.
    Photos to embed carry their bytes in an ``image`` column."""
    work = PhotoWork.of(cfg)
    known = _known_photos(rows["item_id"].tolist(), earlier, night_catalog, night_ids, night_vectors)
    selling = rows.index[rows["status"] == "on_sale"].tolist()
    same_text = {i: _same_text(template, known.get(rows.at[i, "item_id"]), rows.loc[i].to_dict()) for i in selling}
    tasks = []
    for i in selling:
        before = known.get(rows.at[i, "item_id"])
        same_key = before is not None and same_text[i] and before["image_key"] == rows.at[i, "image_key"] and \
            (before["image_source"] or "").startswith(work.norm + "|")
        identity = before["image_source"].split("|", 1)[1] if same_key else None
        tasks.append(PhotoTask(rows.at[i, "image_key"], None if identity is None or identity.startswith("version:")
                               else identity, rows.at[i, "image_version"]))
    results = work(tasks)
    n = len(rows)
    source, sha, image, reason = [None] * n, [None] * n, [None] * n, [None] * n
    vectors: list = [None] * n
    decoded = quarantined = 0
    for i, result in zip(selling, results):
        before = known.get(rows.at[i, "item_id"])
        if result.unchanged:
            source[i], sha[i], vectors[i] = before["image_source"], before["image_sha256"], before["embedding"]
        elif result.photo is not None:
            decoded += 1
            photo = result.photo
            source[i], sha[i], image[i] = photo.source, photo.sha256, photo.jpeg
            if before is not None and same_text[i] and before["image_sha256"] == photo.sha256:  # same bytes: same vector
                vectors[i] = before["embedding"]
        else:
            quarantined += 1
            reason[i] = result.reason
    columns = {name: rows[name].tolist() if name in rows else [None] * n for name in ch.CHANGES.names}
    columns.update(image_source=source, image_sha256=sha, reason=reason, embedding=vectors,
                   price=[None if p is None or pd.isna(p) else float(p) for p in columns["price"]])
    table = pa.Table.from_pydict(columns, schema=ch.CHANGES).append_column("image", pa.array(image, pa.binary()))
    if rejects:  # rows that break the contract: out of the catalogue, with their reason
        bad = [r for r in rejects if r.get("item_id")]
        rejected = pa.Table.from_pylist([{"item_id": r["item_id"], "reason": r["reason"]} for r in bad],
                                        schema=pa.schema([ch.CHANGES.field("item_id"), ch.CHANGES.field("reason")]))
        for name in ch.CHANGES.names:
            if name not in rejected.column_names:
                rejected = rejected.append_column(ch.CHANGES.field(name), pa.nulls(len(bad), ch.CHANGES.field(name).type))
        rejected = rejected.append_column("image", pa.nulls(len(bad), pa.binary()))
        table = pa.concat_tables([table, rejected.select(table.column_names)])
    return table, {"photos_decoded": decoded, "photos_reused": len(selling) - decoded - quarantined,
                   "quarantined": quarantined + len(rejects)}


def _same_text(template: str | None, before: dict | None, row: dict) -> bool:
    """Whether the served system reads the same text for a listing as its known vector did (always, when it
    reads photos alone)."""
    if template is None:
        return True
    return before is not None and len(set(serving.item_texts(template, [before, row]))) == 1


def _known_photos(item_ids: list[str], earlier: pa.Table, night_catalog: pa.Table, night_ids: pa.Array,
                  night_vectors: np.ndarray) -> dict[str, dict]:
    """Per item of ``item_ids``, its photo as last known (an earlier hour's changes, else the night's
    catalogue): image_key, image_source, image_sha256, its vector and the text fields it was embedded with."""
    wanted = pa.array(item_ids, pa.string())
    known = {}
    rows = night_catalog.filter(pc.is_in(night_catalog.column("item_id"), value_set=wanted))
    at = positions_in(rows.column("item_id").combine_chunks(), night_ids)  # each one's row among the vectors
    texts = [f for f in TEXT_FIELDS if f in night_catalog.column_names]
    for row, where in zip(rows.select(["item_id", "image_key", "image_source", "image_sha256", *texts]).to_pylist(), at):
        known[row["item_id"]] = {**row, "embedding": night_vectors[where].tolist() if where >= 0 else None}
    hours = earlier.filter(pc.is_in(earlier.column("item_id"), value_set=wanted))
    texts = [f for f in TEXT_FIELDS if f in earlier.column_names]
    for row in hours.select(["item_id", "image_key", "image_source", "image_sha256", "embedding", *texts]).to_pylist():
        if row["image_source"] is not None:
            known[row["item_id"]] = row
    return known


def _embedded(cfg: Config, table: pa.Table, served: dict, version: str, dim: int) -> tuple[pa.Table, int]:
    """The photos without a vector embedded by the night's served system (its projection too, stored the
    way the night stores its vectors); one that no longer decodes is left out with its reason."""
    from lookalike.embed.stage import embed_frames

    todo = pc.and_(pc.is_valid(table.column("image")), pc.is_null(table.column("embedding")))
    todo = todo.to_numpy(zero_copy_only=False).astype(bool)
    vectors = table.column("embedding").to_pylist()
    reasons = table.column("reason").to_pylist()
    if todo.any():
        if "model_path" not in served:
            raise LookalikeError(f"intraday: the night's embed_stats.json does not say which folder it embedded with "
                                 f"({served['model_version']}): an earlier release wrote it; the next night does")
        path, projection = served["model_path"], served.get("projection")
        texts = [f for f in TEXT_FIELDS if f in table.column_names]
        rows = table.filter(pa.array(todo)).select(["item_id", "image_sha256", "image", *texts]).to_pandas()
        out = pd.concat(list(embed_frames(iter([rows]), path, cfg.embed.batch_size, projection)), ignore_index=True)
        for i, vector, error in zip(np.flatnonzero(todo), out["embedding"], out["error"]):
            if error is not None:
                reasons[i] = error
                continue
            vector = np.asarray(vector, np.float32)
            if len(vector) != dim:
                raise LookalikeError(f"intraday: the served system {served['model_version']} gives {len(vector)}-d "
                                     f"vectors, the night's are {dim}-d: run the night again")
            vectors[i] = (vector.astype(np.float16).astype(np.float32) if cfg.embed.float16 else vector).tolist()
    table = table.drop_columns(["image"])
    table = table.set_column(table.schema.get_field_index("reason"), "reason", pa.array(reasons, pa.string()))
    table = table.set_column(table.schema.get_field_index("embedding"), "embedding",
                             pa.array(vectors, pa.list_(pa.float32())))
    return table, int(todo.sum())


def _rows(night: str, as_of: str, version: str, ids: pa.Array, images: np.ndarray, changed: np.ndarray,
          top: tuple[np.ndarray, np.ndarray], k: int, gone: pa.Array) -> pa.Table:
    """The hour's ``item_neighbors_intraday`` rows: each changed item's whole list, and one rank-0 row for
    each item whose list is withdrawn (out of the catalogue, or short of k neighbours now)."""
    pos, scores = top
    full = (pos[changed] >= 0).all(axis=1)
    listed = neighbor_table(night, version, ids, images, changed[full], pos[changed[full]], scores[changed[full]], k)
    out = [listed.append_column("as_of", pa.array([as_of] * listed.num_rows, pa.string()))]
    short = ids.take(pa.array(changed[~full], pa.int64()))
    none = pc.unique(pa.concat_arrays([gone.cast(pa.string()), short]))
    n = len(none)
    out.append(pa.table({"ds": [night] * n, "as_of": [as_of] * n, "item_id": none, "rank": pa.array([0] * n, pa.int32()),
                         "neighbor_id": pa.nulls(n, pa.string()), "score": pa.nulls(n, pa.float32()),
                         "same_image": pa.nulls(n, pa.bool_()), "model_version": [version] * n}))
    schema = schemas.ITEM_NEIGHBORS_INTRADAY
    table = pa.concat_tables([t.select(schema.names).cast(schema) for t in out])
    return table.sort_by([("item_id", "ascending"), ("rank", "ascending")])


def _finished(wh: Warehouse, night: Night, as_of: str) -> dict:
    """The finished hour ``as_of`` of ``night``; StaleHour when it built on an earlier night."""
    marker = _folder(wh, night.ds, as_of) / MARKER
    if marker.exists():
        return {**json.loads(marker.read_text()), "folder": str(marker.parent)}
    older = sorted(wh.work_root.glob(f"ds=*/intraday/{as_of.replace(':', '')}/{MARKER}"))
    if older:
        built_on = json.loads(older[-1].read_text())["night"]
        raise StaleHour(f"intraday {as_of} built on the night {built_on}, and the night {night.ds} has been "
                        "published since: nothing of it is published; the next hour applies its changes on "
                        f"{night.ds}")
    raise LookalikeError(f"intraday {as_of}: no finished hour on the night {night.ds}: run "
                         f"`lookalike intraday --as-of {as_of}` (its first step) first")


def publish_hour(cfg: Config, as_of: str) -> dict:
    """Check the hour's lists and publish them as the night's ``item_neighbors_intraday`` partition, in one
    manifest switch. A stale hour, or one older than the hour published, publishes nothing."""
    from lookalike.publish.checks import check_neighbors

    wh = Warehouse.of(cfg)
    as_of = as_of_text(as_of)
    night = served_night(wh)
    try:
        hour = _finished(wh, night, as_of)
    except StaleHour as exc:
        log.warning("%s", exc)
        return {"as_of": as_of, "skipped": str(exc)}
    published = wh.entries(TABLE).get(night.ds)
    if published and published.get("as_of", "") > as_of:
        why = f"the later hour {published['as_of']} is published on the night {night.ds}"
        log.info("intraday %s: not published: %s", as_of, why)
        return {"as_of": as_of, "skipped": why}
    path = Path(hour["folder"]) / TABLE / "part-0.parquet"
    rows = pq.read_table(path)
    changes = pq.read_table(Path(hour["folder"]) / "changes.parquet", columns=["item_id", "status", "reason",
                                                                               "embedding"])
    night_ids = pq.read_table(wh.work(night.ds, "item_embeddings"), columns=["item_id"]).column("item_id")
    active = _catalogue_ids(night_ids.combine_chunks(), changes)
    lists = rows.filter(pc.greater(rows.column("rank"), 0))
    failures = check_neighbors(lists, k=cfg.neighbors.k, active=active, embedded=active) if lists.num_rows else []
    both = pc.is_in(rows.filter(pc.equal(rows.column("rank"), 0)).column("item_id"), value_set=lists.column("item_id"))
    if pc.any(both).as_py():
        failures.append("an item is both withdrawn and listed")
    if failures:
        raise LookalikeError(f"intraday {as_of}: the hour's lists fail their checks, nothing published: "
                             + "; ".join(failures))
    publication = wh.begin(night.ds)
    publication.add(TABLE, [path], rows.num_rows, as_of=as_of, since=hour["since"])
    faults.point("intraday.before_publish")
    entry = publication.commit(retain=cfg.publish.retain_partitions)[TABLE]
    log.info("intraday %s: published %d rows of item_neighbors_intraday on the night %s (run %s)", as_of,
             rows.num_rows, night.ds, entry["run_id"])
    return {"as_of": as_of, "night": night.ds, "run_id": entry["run_id"], "rows": rows.num_rows,
            "warehouse": wh.display()}


def _catalogue_ids(night_ids: pa.Array, changes: pa.Table) -> pa.Table:
    """The items in the catalogue after ``changes``: the night's, less those changed, plus those listed."""
    kept = night_ids.filter(pc.invert(pc.is_in(night_ids, value_set=changes.column("item_id"))))
    live = changes.filter(pa.array(ch.listed(changes))).column("item_id").combine_chunks()
    return pa.table({"item_id": pa.concat_arrays([kept, live.cast(pa.string())])})


def handoff_hour(cfg: Config, as_of: str) -> dict:
    """The published hour's lists into every store's live generation of the night (``patch_live``)."""
    from lookalike.online.handoff import patch_live
    from lookalike.online.lists import BY_NAME, lists_of

    as_of = as_of_text(as_of)
    if not cfg.serving.sink_names or "item_neighbors" not in cfg.serving.table_names:
        return {"as_of": as_of, "skipped": "no serving.sinks configured, or item_neighbors not among serving.tables"}
    wh = Warehouse.of(cfg)
    night = served_night(wh)
    entry = wh.entries(TABLE).get(night.ds)
    if entry is None or entry.get("as_of") != as_of:
        why = (f"the hour published on the night {night.ds} is {entry['as_of']}" if entry
               else f"no hour is published on the night {night.ds}")
        log.info("intraday %s: nothing handed off: %s", as_of, why)
        return {"as_of": as_of, "skipped": why}
    spec = BY_NAME["item_neighbors"]

    def served(rows: pa.Table) -> tuple[pa.Table, pa.Array]:
        listed = rows.filter(pc.greater(rows.column("rank"), 0)).select(["item_id", "rank", "neighbor_id", "score"])
        return lists_of(listed, spec), rows.filter(pc.equal(rows.column("rank"), 0)).column("item_id")

    now = served(wh.read_entry(TABLE, entry))

    def changes(live) -> tuple[pa.Table, list[str]]:
        """What a store serving ``live`` needs: the lists changed since the hour it holds (every list the hours
        changed, for a store that holds the night alone, or an hour no longer in the work area)."""
        marker = _folder(wh, night.ds, live.as_of) / MARKER if live.as_of else None
        if marker is None or not marker.exists():
            return now[0], now[1].to_pylist()
        return ch.since(now, served(pq.read_table(marker.parent / TABLE)))

    sinks = patch_live(cfg, ds=night.ds, run_id=night.run_id, as_of=as_of, changes=changes)
    record = {"ds": night.ds, "as_of": as_of, "run_id": entry["run_id"], "sinks": sinks,
              "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    wh.write_handoff_record(night.ds, "intraday", record)
    return record
