"""The publish stage: check the ds's outputs, then commit every table in one switch.

Nothing is published unless every check passes; a failing run raises with the list of failures
and the previous partitions stay exactly as they were. The tables are written under a fresh
run prefix of the warehouse (local or S3) and become visible together when the manifest
switches (see ``lookalike.storage``); a rerun of the ds replaces its partitions instead of
adding rows. The run's record (rows per table, neighbour-index statistics, config) is written
to ``_runs/<ds>.json`` beside the tables.
"""
from __future__ import annotations

import hashlib
import json
import logging

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lookalike import code_version, faults, schemas, tables
from lookalike.publish import drift
from lookalike.config import Config
from lookalike.errors import LookalikeError
from lookalike.extract import photos
from lookalike.publish.checks import check_embeddings, check_neighbors, check_recommendations, check_rows
from lookalike.storage import Warehouse, write_parquet

log = logging.getLogger(__name__)

WORK_INPUTS = ("listings_snapshot", "catalog", "quarantine", "embed_quarantine", "item_embeddings",
               "item_neighbors")
# eval_metrics is published when the ds has rows for it: lookalike_finetune's evaluation of the model
# (work eval_metrics) and the user model's (work userrec_metrics), together, whichever DAG publishes.
EVAL_INPUTS = ("eval_metrics", "userrec_metrics")

# Published with the night while an experiment runs (pipelines/experiments/stage.py writes all three or none).
EXPERIMENT_TABLES = ("item_neighbors_variants", "experiment_variants", "ab_results")
NIGHTLY_TABLES = tuple(t for t in tables.published_by(tables.NIGHTLY) if t not in EXPERIMENT_TABLES)  # every night
USER_TABLES = tuple(t for t in tables.published_by(tables.USER_RECS) if t not in NIGHTLY_TABLES)  # publish_user_recs


class PublishCheckFailed(LookalikeError):
    """A quality check failed; nothing of this run was published."""


class DriftRefused(PublishCheckFailed):
    """The ds differs from the previous published day beyond ``publish.*`` bounds; nothing was published."""

    def __init__(self, message: str, breaches: list[str] = ()):
        super().__init__(message)
        self.breaches = list(breaches)  # each bound breached, with its figures


def _files(folder) -> list:
    return sorted(folder.glob("*.parquet"))


def _rows(files) -> int:
    return sum(pq.read_metadata(f).num_rows for f in files)


def stage_tables(wh: Warehouse, ds: str) -> dict[str, list]:
    """The Parquet files to publish per table: work files as they are, the snapshot and catalogue
    without their image bytes, both quarantines in one table."""
    missing = [name for name in WORK_INPUTS if not wh.work(ds, name).exists()]
    if missing:
        raise LookalikeError(f"publish {ds}: the work area {wh.work_root} lacks {', '.join(missing)}; "
                             "run the stages before publish (`lookalike run --ds` runs them all)")
    staging = wh.fresh_work(ds, "publish_staging")
    files = {name: _files(wh.work(ds, name)) for name in ("item_embeddings", "item_neighbors")}
    if wh.work(ds, "experiment_variants").exists():
        files.update({name: _files(wh.work(ds, name)) for name in EXPERIMENT_TABLES})
    files.update(_eval_metrics(wh, ds, staging))
    for name in ("listings_snapshot", "catalog"):
        columns = [f.name for f in schemas.LISTINGS_SNAPSHOT]
        files[name] = [write_parquet(pq.read_table(wh.work(ds, name), columns=columns),
                                     staging / name / "part-0.parquet")]
    quarantine = pa.concat_tables([pq.read_table(wh.work(ds, name)).cast(schemas.QUARANTINE)
                                   for name in ("quarantine", "embed_quarantine")])
    files["quarantine"] = [write_parquet(quarantine, staging / "quarantine" / "part-0.parquet")]
    return files


def _eval_metrics(wh: Warehouse, ds: str, staging) -> dict[str, list]:
    """The ds's eval_metrics file: every evaluation it has, in one table (none: no entry)."""
    parts = [pq.read_table(wh.work(ds, name), partitioning=None).cast(schemas.EVAL_METRICS)
             for name in EVAL_INPUTS if wh.work(ds, name).exists()]
    if not parts:
        return {}
    return {"eval_metrics": [write_parquet(pa.concat_tables(parts), staging / "eval_metrics" / "part-0.parquet")]}


def publish_user_recs(cfg: Config, ds: str) -> dict:
    """Check and commit the ds's user recommendations with its eval_metrics, in one switch."""
    wh = Warehouse.of(cfg)
    if not wh.work(ds, "user_recommendations").exists():
        raise LookalikeError(f"publish {ds}: no user recommendations in {wh.work_root}; run `lookalike userrec "
                             f"--ds {ds}` first")
    staging = wh.fresh_work(ds, "publish_userrec_staging")
    files = {name: _files(wh.work(ds, name)) for name in USER_TABLES}
    files.update(_eval_metrics(wh, ds, staging))
    rows = {table: _rows(f) for table, f in files.items()}
    catalog = pq.read_table(wh.work(ds, "catalog"), columns=["item_id", "status"], partitioning=None)
    active = catalog.filter(pc.equal(catalog.column("status"), "on_sale")).column("item_id")
    failures = check_recommendations(files["user_recommendations"], k=cfg.userrec.k, on_sale=active) + \
        [f for table, n in rows.items() for f in check_rows(n, table)]
    return _commit(cfg, wh, ds, files, rows, failures, record=None)


def run_publish(cfg: Config, ds: str, approval: dict | None = None) -> dict:
    """Check and publish the ds's nightly tables; ``approval`` (who approved a refused ds, and when: the DAG's
    approve_drift task) goes into the run record's drift block."""
    wh = Warehouse.of(cfg)
    files = stage_tables(wh, ds)
    rows = {table: _rows(f) for table, f in files.items()}
    catalog = pq.read_table(wh.work(ds, "catalog"), columns=["item_id", "status"])
    active = catalog.filter(pc.equal(catalog.column("status"), "on_sale")).select(["item_id"])
    failures = (check_neighbors(files["item_neighbors"], k=cfg.neighbors.k, active=active,
                                embedded=files["item_embeddings"])
                + check_embeddings(files["item_embeddings"])
                + _check_arms(cfg, files, active)
                + [f for t in ("listings_snapshot", "catalog", "eval_metrics") if t in rows for f in check_rows(rows[t], t)])
    stats_path = wh.work(ds, "neighbors_stats.json")
    record = {"ds": ds, "rows": rows, "warehouse": wh.display(),
              "neighbors": json.loads(stats_path.read_text()) if stats_path.exists() else None,
              "config": cfg.to_public_dict()}
    embed_stats = wh.work(ds, "embed_stats.json")
    record["served"] = json.loads(embed_stats.read_text()).get("served") if embed_stats.exists() else None
    record["code"] = code_version()  # what ran: the package and, from a checkout, its commit
    record["config_sha256"] = hashlib.sha256(json.dumps(cfg.to_public_dict(), sort_keys=True).encode()).hexdigest()
    record["extract"] = photos.read_marker(wh, ds)
    decision = wh.work(ds, "model_decision.json")  # the evaluation's verdict on the week's model
    record["model"] = json.loads(decision.read_text()) if decision.exists() else None
    if not failures:
        record["drift"] = _gate(cfg, wh, ds, files, rows, on_sale=active.num_rows, served=record["served"])
        if approval:
            record["drift"]["approval"] = approval
    return _commit(cfg, wh, ds, files, rows, failures, record)


def _check_arms(cfg: Config, files: dict, active: pa.Table) -> list[str]:
    """item_neighbors' checks on every arm of experiment_variants, one at a time, in item_neighbors_variants."""
    if "experiment_variants" not in files:
        return []
    if not files["item_neighbors_variants"]:
        return ["item_neighbors_variants is missing while experiments run"]
    arms = pq.read_table(files["experiment_variants"], columns=["experiment", "variant"], partitioning=None).to_pylist()
    return [failure for arm in arms
            for failure in check_neighbors(files["item_neighbors_variants"], k=cfg.neighbors.k, active=active,
                                           embedded=files["item_embeddings"], arm=(arm["experiment"], arm["variant"]))]


def _gate(cfg: Config, wh: Warehouse, ds: str, files: dict, rows: dict, *, on_sale: int,
          served: dict | None) -> dict:
    """Compare the ds with the previous published day; refuse it beyond the bounds unless accepted."""
    today = drift.profile(files, rows, on_sale)
    earlier = [d for d in wh.entries("item_neighbors") if d < ds]
    previous = earlier[-1] if earlier else None
    before = ((wh.run_record(previous) or {}).get("drift") or {}).get("profile") if previous else None
    lists = drift.overlap(wh, previous, files, items=today["items_with_neighbors"]) if previous else None
    switch = drift.switched(today, before, served)
    breaches = drift.compare(today, before, lists, cfg.publish, switch)
    decision = "refused" if breaches and not cfg.publish.accept_drift else \
        "published beyond the bounds (publish.accept_drift)" if breaches else "published"
    gate = {"previous_ds": previous, "profile": today, "previous_profile": before, "overlap": lists,
            "breaches": breaches, "accept_drift": cfg.publish.accept_drift, "decision": decision,
            "switch": switch}
    if breaches:
        log.warning("publish %s: differs from %s beyond the bounds: %s", ds, previous, "; ".join(breaches))
    if decision == "refused":
        raise DriftRefused(f"publish {ds} refused, nothing was published: it differs from the published {previous} "
                           f"beyond the publish.* bounds: {'; '.join(breaches)}. If the change is expected (a new "
                           f"catalogue, a retrained model), approve the run's approve_drift task in lookalike_nightly, "
                           f"or rerun with publish.accept_drift (`lookalike publish --accept-drift`)", breaches)
    return gate


def _commit(cfg: Config, wh: Warehouse, ds: str, files: dict, rows: dict, failures: list[str],
            record: dict | None) -> dict:
    """Refuse with every failure, or write ``files`` under a new run and switch the manifest to it
    (``record``, when given, becomes ``_runs/<ds>.json`` with the run id)."""
    if failures:
        raise PublishCheckFailed(f"publish {ds} refused, nothing was published: " + "; ".join(failures))
    publication = wh.begin(ds)
    try:
        for i, (table, table_files) in enumerate(files.items()):
            if i == 1:
                faults.point("publish.between_tables")
            publication.add(table, table_files, rows=rows[table])
    except BaseException:
        publication.abort()
        raise
    faults.point("publish.before_commit")
    publication.commit(retain=cfg.publish.retain_partitions,
                       record={**record, "run_id": publication.run_id} if record is not None else None)
    log.info("publish %s: committed run %s to %s: %s", ds, publication.run_id, wh.display(),
             ", ".join(f"{t} {n}" for t, n in rows.items()))
    return {"run_id": publication.run_id, "rows": rows, "warehouse": wh.display()}
