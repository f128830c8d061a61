"""The publish stage: check the ds's outputs, then commit each table atomically.

Nothing is published unless every check passes; a failing run raises with the list of
failures and the previous partitions stay exactly as they were. Each table's commit switches
its manifest in one rename (see ``pipelines.storage``), and a rerun of the ds replaces its
partition instead of adding rows.
"""
from __future__ import annotations

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import schemas
from pipelines.config import Config
from pipelines.errors import LookalikeError
from pipelines.publish.checks import check_embeddings, check_neighbors, check_rows
from pipelines.storage import Warehouse, atomic_write_text, new_run_id, write_parquet

log = logging.getLogger(__name__)


class PublishCheckFailed(LookalikeError):
    """A quality check failed; nothing of this run was published."""


def run_publish(cfg: Config, ds: str) -> dict:
    wh = Warehouse.at(cfg.warehouse)
    staged = {
        "listings_snapshot": pq.read_table(wh.work(ds, "listings_snapshot")).drop_columns(["image"]),
        "catalog": pq.read_table(wh.work(ds, "catalog")).drop_columns(["image"]),
        "quarantine": pa.concat_tables([pq.read_table(wh.work(ds, name)).cast(schemas.QUARANTINE)
                                        for name in ("quarantine", "embed_quarantine")]),
        "item_embeddings": pq.read_table(wh.work(ds, "item_embeddings")),
        "item_neighbors": pq.read_table(wh.work(ds, "item_neighbors")),
        "eval_metrics": pq.read_table(wh.work(ds, "eval_metrics")),
    }
    catalog = pq.read_table(wh.work(ds, "catalog"), columns=["item_id", "status"]).to_pydict()
    active = {i for i, s in zip(catalog["item_id"], catalog["status"]) if s == "on_sale"}
    embedded = set(staged["item_embeddings"].column("item_id").to_pylist())
    failures = (check_neighbors(staged["item_neighbors"], k=cfg.neighbors.k, active_ids=active, embedded_ids=embedded)
                + check_embeddings(staged["item_embeddings"])
                + check_rows(staged["listings_snapshot"], "listings_snapshot")
                + check_rows(staged["catalog"], "catalog")
                + check_rows(staged["eval_metrics"], "eval_metrics"))
    if failures:
        raise PublishCheckFailed(f"publish {ds} refused, nothing was published: " + "; ".join(failures))

    run_id = new_run_id()
    stage_dir = wh.fresh_work(ds, "publish_staging")
    committed = {}
    for table, data in staged.items():
        folder = stage_dir / table
        write_parquet(data, folder / "part-0.parquet")
        wh.commit(table, ds, folder, rows=data.num_rows, retain=cfg.publish.retain_partitions, run_id=run_id)
        committed[table] = data.num_rows
    atomic_write_text(wh.root / "_runs" / f"{ds}.json", json.dumps(
        {"ds": ds, "run_id": run_id, "rows": committed, "config": cfg.to_dict()}, indent=2))
    log.info("publish %s: committed %s", ds, ", ".join(f"{t} {n}" for t, n in committed.items()))
    return {"run_id": run_id, "rows": committed}
