"""The experiments stage of the nightly run: each running experiment's arms, their neighbours and
the results so far, into the work area for publish.

For every experiment whose start/end dates hold the ds (``experiments.*``), each arm's ``serve``
is resolved to a system: ``production`` is what the night serves (this ds's ``item_embeddings``
and ``item_neighbors``, reused as they are); ``candidate`` the newest registered model that is not
production (production when there is none); ``image_baseline`` the fitted image baseline; anything
else a version of the model registry. A system other than production embeds the ds's embedded
items in this process and gets its neighbours from the same search, settings and filters as
``item_neighbors`` (``neighbors.*``), once per system however many arms serve it. The outputs:

- ``item_neighbors_variants``: item_neighbors' rows per (experiment, variant);
- ``experiment_variants``: each arm, what it served tonight and its bucket range;
- ``ab_results``: the analysis (``lookalike.experiments.analysis``) of the experiment's logged
  events in the ds's interaction log (the extract's log window, before the ds).

A night with no running experiment removes them, and publish has nothing to add.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lookalike import registry, schemas, serving
from lookalike.config import Config
from lookalike.errors import LookalikeError
from lookalike.experiments import analysis
from lookalike.assignment import Experiment, running
from lookalike.neighbors.stage import StreamingParquet, build_neighbors, filter_codes
from lookalike.storage import ModelStore, Warehouse, write_parquet
from lookalike.systems import CANDIDATE, IMAGE_BASELINE, PRODUCTION

log = logging.getLogger(__name__)

OUTPUTS = ("item_neighbors_variants", "experiment_variants", "ab_results")


def resolve_arm(cfg: Config, ds: str, serve: str, production_version: str) -> tuple[str, str | None]:
    """(model_version, folder to embed with) of what an arm serves; folder None: production's own rows."""
    store = ModelStore.at(cfg.models)
    if serve == PRODUCTION:
        return production_version, None
    if serve == CANDIDATE:
        current = registry.production(store)
        candidates = [v["version"] for v in registry.list_versions(store) if v["version"] != current]
        if not candidates:
            return production_version, None
        serve = candidates[-1]
    if serve == IMAGE_BASELINE:
        version, folder = serving.ensure_baseline(cfg, ds)
    else:
        if not registry.version_info(store, serve):
            known = ", ".join(v["version"] for v in registry.list_versions(store)) or "none"
            raise LookalikeError(f"an experiment serves model version {serve!r}, which the model registry does not "
                                 f"hold (registered: {known}); name production, candidate, image_baseline or a "
                                 "registered version")
        version, folder = serve, store.version_dir(serve)
    return (production_version, None) if version == production_version else (version, str(folder))


def _embed_items(wh: Warehouse, ds: str, ids: pa.Array, folder: str, batch_size: int) -> tuple[pa.Array, np.ndarray]:
    """(item ids, unit vectors) of the ds's embedded items under the system in ``folder``, the
    catalogue read one row group at a time (memory: one group's photos and the vectors)."""
    from lookalike.embed.stage import embed_frames
    from lookalike.texts import TEXT_FIELDS  # an arm that reads titles reads them as the night does

    def frames():
        for file in sorted(wh.work(ds, "catalog").glob("*.parquet")):
            parquet = pq.ParquetFile(file)
            for i in range(parquet.num_row_groups):
                group = parquet.read_row_group(i, columns=["item_id", "image_sha256", "image", *TEXT_FIELDS])
                group = group.filter(pc.is_in(group.column("item_id"), value_set=ids))
                if group.num_rows:
                    yield group.to_pandas()

    got_ids, vectors = [], []
    for frame in embed_frames(frames(), folder, batch_size):
        for item, vector in zip(frame["item_id"], frame["embedding"]):
            if vector is not None:  # a photo that no longer decodes: that arm leaves the item out
                got_ids.append(item)
                vectors.append(np.asarray(vector, np.float32))
    order = np.argsort(np.array(got_ids, dtype=object), kind="stable")
    return pa.array(np.array(got_ids, dtype=object)[order], pa.string()), np.stack(vectors)[order]


class ArmsWriter:
    """Writes each block of neighbour rows once per (experiment, variant) label into one file."""

    def __init__(self, writer: StreamingParquet, labels: list[tuple[str, str]]):
        self.writer, self.labels = writer, labels

    def write_table(self, table: pa.Table) -> None:
        for experiment, variant in self.labels:
            n = table.num_rows
            self.writer.write_table(table.append_column("experiment", pa.array([experiment] * n, pa.string()))
                                    .append_column("variant", pa.array([variant] * n, pa.string()))
                                    .cast(schemas.ITEM_NEIGHBORS_VARIANTS))


def results(cfg: Config, experiment: Experiment, events: pd.DataFrame, ds: str, prices: dict[str, float]) -> list[dict]:
    """The ab_results rows of ``experiment`` from ``events``, those before ``ds`` and from its start on."""
    if experiment.start:
        events = events[events["ts"] >= experiment.start]
    return analysis.analyse(events, experiment, ds=ds, prices=prices, ab=cfg.ab, before=ds)


def run_experiments(cfg: Config, ds: str) -> dict:
    wh = Warehouse.of(cfg)
    experiments = running(cfg, ds)
    if not experiments:
        for name in OUTPUTS:
            shutil.rmtree(wh.work(ds, name), ignore_errors=True)
        return {"experiments": []}
    emb = wh.work(ds, "item_embeddings")
    if not emb.exists() or not wh.work(ds, "item_neighbors").exists():
        raise LookalikeError(f"experiments {ds}: no item_embeddings/item_neighbors in the work area: run "
                             f"`lookalike embed --ds {ds}` and `lookalike neighbors --ds {ds}` first")
    production_version = json.loads(wh.work(ds, "embed_stats.json").read_text())["model_version"]

    systems: dict[str, str | None] = {}  # model_version → folder (None: production's rows)
    labels: dict[str, list[tuple[str, str]]] = {}
    arm_rows = []
    for exp in experiments:
        for arm in exp.arms:
            version, folder = resolve_arm(cfg, ds, arm.serve, production_version)
            systems[version] = folder
            labels.setdefault(version, []).append((exp.name, arm.variant))
            arm_rows.append({"ds": ds, "experiment": exp.name, "variant": arm.variant, "is_control": arm.is_control,
                             "serve": arm.serve, "model_version": version, "share": arm.share, "salt": exp.salt,
                             "bucket_low": arm.low, "bucket_high": arm.high, "start_ds": exp.start, "end_ds": exp.end})
    out = wh.fresh_work(ds, "item_neighbors_variants")
    ids = pq.read_table(emb, columns=["item_id"], partitioning=None).sort_by("item_id").column("item_id").combine_chunks()
    catalog = pq.read_table(wh.work(ds, "catalog"), columns=["item_id", "status", "category", "seller_id",
                                                              "image_sha256"])
    on_sale_ids = catalog.filter(pc.equal(catalog.column("status"), "on_sale")).column("item_id")
    stats = {}
    with StreamingParquet(out / "part-0.parquet", schemas.ITEM_NEIGHBORS_VARIANTS) as file:
        for version, folder in systems.items():
            writer = ArmsWriter(file, labels[version])
            if folder is None:
                for part in sorted(Path(wh.work(ds, "item_neighbors")).glob("*.parquet")):
                    for batch in pq.ParquetFile(part).iter_batches(batch_size=65_536):
                        writer.write_table(pa.Table.from_batches([batch]).cast(schemas.ITEM_NEIGHBORS))
                stats[version] = "production's item_neighbors"
                continue
            arm_ids, vectors = _embed_items(wh, ds, ids, folder, cfg.embed.batch_size)
            on_sale = pc.is_in(arm_ids, value_set=on_sale_ids).to_numpy(zero_copy_only=False)
            codes = filter_codes(arm_ids, catalog)
            searched = build_neighbors(vectors, arm_ids, ncfg=cfg.neighbors, on_sale=on_sale, writer=writer, ds=ds,
                                       version=version, **codes)
            stats[version] = f"{len(arm_ids)} items embedded here, {searched['rows']} rows"
            log.info("experiments %s: %s → %s (arms %s)", ds, version, stats[version],
                     ", ".join(f"{e}/{v}" for e, v in labels[version]))
    write_parquet(pa.Table.from_pylist(arm_rows, schema=schemas.EXPERIMENT_VARIANTS),
                  wh.fresh_work(ds, "experiment_variants") / "part-0.parquet")

    events = pq.read_table(wh.work(ds, "interactions"), partitioning=None).to_pandas()
    prices = analysis.price_map(pq.read_table(wh.work(ds, name), columns=["item_id", "price"], partitioning=None)
                                for name in ("listings_snapshot", "catalog"))
    rows = [row for exp in experiments for row in results(cfg, exp, events, ds, prices)]
    write_parquet(pa.Table.from_pylist(rows, schema=schemas.AB_RESULTS),
                  wh.fresh_work(ds, "ab_results") / "part-0.parquet")
    for exp in experiments:
        mine = [r for r in rows if r["experiment"] == exp.name]
        log.info("experiments %s: %s, arms %s; %s", ds, exp.name,
                 ", ".join(f"{r['variant']}={r['model_version']}" for r in arm_rows if r["experiment"] == exp.name),
                 f"results from {mine[0]['first_day']} to {mine[0]['last_day']}" if mine else
                 "no logged module impression of it yet")
    return {"experiments": [e.name for e in experiments], "systems": stats, "ab_results": len(rows)}
