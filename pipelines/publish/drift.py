"""The gate against yesterday: what a bad model or bad data would publish looks different from the
previous published day, even when every structural check passes.

Each publish of ``lookalike_nightly`` measures a *profile* of its ds — rows per table, how many
on-sale items have neighbours (coverage), the score distribution — and compares it, and the
neighbour lists of items whose photo did not change, with the previous published ds. The profile
goes into the run record, so tomorrow compares with it without re-reading today's tables; the
lists are read back for a deterministic sample of items only, so the gate costs the same on a
catalogue of millions.

Bounds (``publish.*``): a row count may move by ``max_rows_change`` (relative), coverage may drop by
``max_coverage_drop`` (absolute), the score quantiles may move by ``max_score_shift``, and the
items whose photo is unchanged must keep on average ``min_neighbor_overlap`` of their neighbours.
A ds outside a bound is refused with the figures; ``publish.accept_drift`` (or ``lookalike
publish --accept-drift``, or the DAG param) publishes it anyway and says so in the run record.
The night the serving rule moves to another system (the first promoted model replacing the image
baseline, a newly promoted model) is held to the row and coverage bounds only: its neighbours
and scores are meant to differ.
"""
from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from lookalike.publish.checks import register
from lookalike.storage import Warehouse

QUANTILES = (0.1, 0.5, 0.9)
OVERLAP_SAMPLE = 5_000  # items whose lists are compared with the previous day
COUNTED_TABLES = ("catalog", "item_embeddings", "item_neighbors")


def profile(files: dict[str, list], rows: dict[str, int], on_sale: int) -> dict:
    """Today's figures from the staged files: rows, coverage of the on-sale items, score quantiles."""
    con = duckdb.connect(":memory:")
    register(con, "n", files["item_neighbors"])
    items, *quantiles = con.execute(
        f"select count(distinct item_id), {', '.join(f'quantile_cont(score, {q})' for q in QUANTILES)} from n"
    ).fetchall()[0]
    versions = [v for (v,) in con.execute("select distinct model_version from n order by 1").fetchall()]
    return {"rows": {t: rows[t] for t in COUNTED_TABLES if t in rows},
            "on_sale": on_sale, "items_with_neighbors": items,
            "coverage": round(items / on_sale, 6) if on_sale else 0.0,
            "score_quantiles": {str(q): round(float(v), 6) for q, v in zip(QUANTILES, quantiles)},
            "model_versions": versions}


def _sample_lists(files: list, items: int, sample: int) -> pa.Table:
    """Today's neighbour lists of a deterministic sample of the ``items`` items (by a hash of the id)."""
    con = duckdb.connect(":memory:")
    register(con, "n", files)
    modulus = max(1, items // sample)
    return con.sql(f"select item_id, list(neighbor_id) neighbors from n where hash(item_id) % {modulus} = 0 "
                   "group by item_id").to_arrow_table()


def _published(wh: Warehouse, table: str, ds: str, columns: list[str], ids: pa.Array) -> pa.Table:
    dataset = pads.dataset(wh.partition_files(table, ds), filesystem=wh.fs, format="parquet")
    return dataset.to_table(columns=columns, filter=pc.field("item_id").isin(ids))


def overlap(wh: Warehouse, previous_ds: str, files: dict[str, list], items: int,
            sample: int = OVERLAP_SAMPLE) -> dict:
    """Mean share of yesterday's neighbours kept today, over sampled items whose photo is unchanged
    (``items``: how many items have neighbours today, from :func:`profile`)."""
    today = _sample_lists(files["item_neighbors"], items, sample)
    ids = today.column("item_id")
    con = duckdb.connect(":memory:")
    con.register("today", today)
    con.register("sha_today", pads.dataset(files["item_embeddings"], format="parquet").to_table(
        columns=["item_id", "image_sha256"], filter=pc.field("item_id").isin(ids)))
    con.register("sha_before", _published(wh, "item_embeddings", previous_ds, ["item_id", "image_sha256"], ids))
    con.register("before", _published(wh, "item_neighbors", previous_ds, ["item_id", "neighbor_id"], ids))
    compared, mean = con.execute("""
        with kept as (
            select t.item_id, t.neighbors, list(b.neighbor_id) before
            from today t join sha_today s using (item_id) join sha_before p using (item_id)
                 join before b using (item_id)
            where s.image_sha256 = p.image_sha256 group by t.item_id, t.neighbors)
        select count(*), avg(len(list_intersect(neighbors, before)) / len(before)) from kept""").fetchone()
    return {"unchanged_items_compared": compared, "mean": round(float(mean), 6) if compared else None}


def switched(today: dict, before: dict | None, served: dict | None) -> str | None:
    """Why the score and overlap bounds do not apply today, if they do not: the registry's serving
    rule (pipelines/serving.py) moved to another system, a change the offline evaluation vetted.
    A model given by hand (``lookalike embed --model``) is held to every bound."""
    if not before or not served or served.get("system") == "given" or \
            today.get("model_versions") == before.get("model_versions"):
        return None
    return (f"the served system changed from {', '.join(before.get('model_versions') or ['?'])} to "
            f"{served['version']} ({served['why']}): score and overlap bounds not applied")


def compare(today: dict, before: dict | None, lists: dict | None, bounds, switch: str | None = None) -> list[str]:
    """The bounds ``today`` breaks against the previous day's profile ``before`` (none: nothing to
    compare); with ``switch`` (see :func:`switched`) only the row and coverage bounds."""
    if before is None:
        return []
    breaches = []
    for table, n in today["rows"].items():
        previous = before["rows"].get(table)
        if previous and abs(n - previous) / previous > bounds.max_rows_change:
            breaches.append(f"{table} rows {previous} → {n} ({(n - previous) / previous:+.1%}, bound "
                            f"±{bounds.max_rows_change:.0%})")
    drop = before["coverage"] - today["coverage"]
    if drop > bounds.max_coverage_drop:
        breaches.append(f"coverage {before['coverage']:.1%} → {today['coverage']:.1%} (drop bound "
                        f"{bounds.max_coverage_drop:.0%})")
    if switch:
        return breaches
    shift = max(abs(today["score_quantiles"][q] - before["score_quantiles"][q]) for q in today["score_quantiles"])
    if shift > bounds.max_score_shift:
        breaches.append(f"score quantiles {before['score_quantiles']} → {today['score_quantiles']} (moved "
                        f"{shift:.3f}, bound {bounds.max_score_shift})")
    if lists and lists["mean"] is not None and lists["mean"] < bounds.min_neighbor_overlap:
        breaches.append(f"items with an unchanged photo kept {lists['mean']:.1%} of their neighbours "
                        f"({lists['unchanged_items_compared']} compared, bound {bounds.min_neighbor_overlap:.0%})")
    return breaches
