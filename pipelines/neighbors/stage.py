"""The neighbors stage: the top-k similar on-sale items of every embedded catalogue item.

Reads the ds's embeddings and catalogue from the work area, plans an index for the candidates
(``lookalike.neighbors.search``), tunes it to ``neighbors.recall_target`` on a query sample,
then searches every item block by block and streams each block's rows into one Parquet file,
so memory holds the vectors, the index and one block of results. From
``neighbors.spark_min_items`` items on, the blocks are searched as Spark tasks instead, each
writing its own part (``lookalike.neighbors.distributed``), with the same rows. Statistics (index, knob,
measured recall, timings) go to ``neighbors_stats.json`` beside the table and into the run
record at publish.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lookalike import schemas
from lookalike.config import Config, NeighborsConfig
from lookalike.errors import LookalikeError
from lookalike.neighbors import distributed
from lookalike.neighbors.describe import describe_mode, describe_recall
from lookalike.neighbors.output import ListsCollector, StreamingParquet, neighbor_table, positions_in, write_rows
from lookalike.neighbors.search import Plan, build_searcher, filters_of, plan_index, search_blocks, tune
from lookalike.atomic import atomic_write_text
from lookalike.storage import Warehouse

log = logging.getLogger(__name__)


def load_embeddings(path) -> tuple[pa.Array, np.ndarray, str]:
    """(item ids (N,) as an Arrow array, vectors (N, D) float32, model_version) of an item_embeddings folder."""
    table = pq.read_table(path, columns=["item_id", "model_version", "embedding"]).sort_by("item_id")
    if table.num_rows == 0:
        raise LookalikeError(f"no embeddings in {path}")
    flat = table.column("embedding").combine_chunks()
    dim = len(flat[0])
    vectors = flat.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    return table.column("item_id").combine_chunks(), vectors, table.column("model_version")[0].as_py()


def _codes(ids: pa.Array, lookup: pa.Table, column: str) -> np.ndarray:
    """Integer code per item of ``lookup[column]`` (aligned on item_id); -1 where null or unknown."""
    idx = positions_in(ids, lookup.column("item_id").combine_chunks())
    values = lookup.column(column).combine_chunks().dictionary_encode()
    codes = values.indices.to_numpy(zero_copy_only=False)
    codes = np.where(values.is_null().to_numpy(zero_copy_only=False), -1, codes).astype(np.int64)
    return np.where(idx >= 0, codes[np.clip(idx, 0, None)], -1)


def filter_codes(ids: pa.Array, catalog: pa.Table) -> dict[str, np.ndarray]:
    """The codes the filters compare, per item of ``ids``: category, seller and photo (``catalog`` holds
    item_id, category, seller_id, image_sha256), as ``build_neighbors`` and ``update_neighbors`` take them."""
    return {"categories": _codes(ids, catalog, "category"), "sellers": _codes(ids, catalog, "seller_id"),
            "images": _codes(ids, catalog, "image_sha256")}


def _cuda_device(setting: str) -> str | None:
    if setting == "cpu":
        return None
    try:
        import torch

        available = torch.cuda.is_available()
    except ImportError:
        available = False
    if setting == "cuda" and not available:
        raise LookalikeError("neighbors.device is cuda but no CUDA device is visible to torch")
    return "cuda" if available else None


def build_neighbors(vectors: np.ndarray, ids: pa.Array, *, ncfg: NeighborsConfig, on_sale: np.ndarray,
                    writer, ds: str, version: str, categories: np.ndarray | None = None,
                    sellers: np.ndarray | None = None, images: np.ndarray | None = None,
                    spark: tuple[Config, Path, Path] | None = None, lists_out: ListsCollector | None = None,
                    keep_index=None) -> dict:
    """Search every item's top-k on-sale neighbours and write them with ``writer.write_table``.

    Returns the run's statistics. ``categories``/``sellers``/``images`` are integer codes per
    item (-1 = unknown), used by the same-category, same-seller and same-image options. With
    ``spark`` = (config, search folder, output folder) the indexes are planned, built and tuned
    here, and the search runs as Spark tasks that write their parts into the output folder
    (:mod:`lookalike.neighbors.distributed`); ``writer`` is not used. ``lists_out``, when
    given, collects each block's lists with their margin (``neighbor_lists``) for the next night;
    ``keep_index(index, plan, tuning)``, when given, gets a single group's inverted-file index once it
    has searched every item (the next nights carry it forward).
    """
    k = ncfg.k
    n, dim = vectors.shape
    images, exclusions, groups = filters_of(ncfg, n, categories=categories, sellers=sellers, images=images)
    if ncfg.threads:
        import faiss

        faiss.omp_set_num_threads(ncfg.threads)
    device = _cuda_device(ncfg.device)
    stats = {"items": n, "dim": dim, "k": k, "candidates": int(on_sale.sum()), "groups": [], "rows": 0,
             "short_items": 0, "same_image_rows": 0, "executor": "spark" if spark else "in-process"}
    folder = distributed.SearchFolder(spark[1], vectors, ids, images, exclusions, k=k, ds=ds, version=version,
                                      block=ncfg.block_size, length=k + ncfg.margin if lists_out else 0) \
        if spark else None
    started = time.monotonic()
    for members in groups:
        candidates = members[on_sale[members]]
        if len(candidates) == 0:
            stats["short_items"] += len(members)
            continue
        plan = plan_index(len(candidates), dim, kind=ncfg.index, exact_max_items=ncfg.exact_max_items,
                          memory_budget_mb=ncfg.memory_budget_mb, cuda=device is not None)
        t0 = time.monotonic()
        searcher = build_searcher(vectors, candidates, plan, seed=ncfg.seed, device=device or "cpu")
        t1 = time.monotonic()
        tuning = tune(searcher, vectors, members, candidates, k, target=ncfg.recall_target,
                      sample=ncfg.recall_sample, seed=ncfg.seed)
        if tuning.get("use_exact"):  # measured: the approximate index does not pay on these vectors
            plan = Plan("torch" if device else "flat",
                        reason=f"{plan.kind} missed the recall target or was not faster than exact search on "
                               f"the tuning sample ({plan.reason})")
            searcher = build_searcher(vectors, candidates, plan, device=device or "cpu")
            tuning = {**tuning, "recall_at_k": 1.0, "exact": True}
        t2 = time.monotonic()
        group = {"items": len(members), "candidates": len(candidates), "index": plan.kind, "reason": plan.reason,
                 "nlist": plan.nlist, **tuning, "build_seconds": round(t1 - t0, 2), "tune_seconds": round(t2 - t1, 2)}
        stats["groups"].append(group)
        keep = keep_index is not None and len(groups) == 1 and plan.kind in ("ivf", "ivfpq") \
            and not tuning.get("exact")
        if folder is not None:  # searched below, on Spark
            folder.add_group(members, candidates, plan, searcher, tuning)
            if keep:  # written for the tasks first: keeping it re-keys it
                keep_index(searcher.index, plan, tuning)
            del searcher
            continue
        writing = 0.0  # forming and writing the rows, lists and index: the same for a full search and an update
        for qpos, npos, scores, lists in search_blocks(searcher, vectors, members, k, n_candidates=len(candidates),
                                                       exclusions=exclusions, block=ncfg.block_size,
                                                       margin=ncfg.margin if lists_out else 0):
            t3 = time.monotonic()
            if lists_out is not None:
                lists_out.write(qpos, lists)
            write_rows(stats, writer, neighbor_table(ds, version, ids, images, qpos, npos, scores, k), len(qpos))
            writing += time.monotonic() - t3
        group["search_seconds"] = round(time.monotonic() - t2 - writing, 2)
        t3 = time.monotonic()
        if keep:
            keep_index(searcher.index, plan, tuning)
        group["write_seconds"] = round(writing + time.monotonic() - t3, 2)
        del searcher
    if folder is not None:
        distributed.search_and_count(spark[0], folder, spark[2], lists_out, stats)
        for group in stats["groups"]:
            group["search_seconds"] = None  # the groups are searched together: see stats["spark"]
    stats["seconds"] = round(time.monotonic() - started, 2)
    weights = [g["items"] for g in stats["groups"]]
    stats["recall_at_k"] = round(float(np.average([g["recall_at_k"] for g in stats["groups"]], weights=weights)), 4) \
        if weights else None
    stats["index"] = sorted({g["index"] for g in stats["groups"]})
    return stats


def run_neighbors(cfg: Config, ds: str, full: bool = False) -> dict[str, str]:
    """The ds's item_neighbors (and the lists the next night starts from): updated from the previous
    night's lists when little changed, else searched in full (``lookalike.neighbors.update.decide``)."""
    from lookalike.neighbors import update

    wh = Warehouse.of(cfg)
    emb = wh.work(ds, "item_embeddings")
    if not emb.exists():
        raise LookalikeError(f"no embeddings for ds={ds} at {emb}: run `lookalike embed --ds {ds}` first")
    ids, vectors, version = load_embeddings(emb)
    catalog = pq.read_table(wh.work(ds, "catalog"), columns=["item_id", "status", "category", "seller_id",
                                                              "image_sha256"])
    on_sale_ids = catalog.filter(pc.equal(catalog.column("status"), "on_sale")).column("item_id")
    on_sale = pc.is_in(ids, value_set=on_sale_ids).to_numpy(zero_copy_only=False)
    codes = filter_codes(ids, catalog)
    ncfg = cfg.neighbors
    on_spark = 0 < ncfg.spark_min_items <= len(ids)
    previous = update.find_previous(wh, ds)
    change = None
    why = update.rebuild_reason(ncfg, ds, version, vectors.shape[1], previous, full=full)
    mode = "full"
    reading = 0.0
    if why is None:
        t0 = time.monotonic()
        was, fresh, removed, kept = update.load_previous(wh, previous, ids, vectors, catalog)
        reading = round(time.monotonic() - t0, 2)
        change = (int(fresh.sum()) + removed) / max(len(ids), 1)
        approximate = not plan_index(int(on_sale.sum()), vectors.shape[1], kind=ncfg.index,
                                     exact_max_items=ncfg.exact_max_items, memory_budget_mb=ncfg.memory_budget_mb).exact
        mode, why = update.decide(ncfg, previous, change_share=change, approximate=approximate)
    out = wh.fresh_work(ds, "item_neighbors")
    lists_out = wh.fresh_work(ds, "neighbor_lists")
    index_out = wh.fresh_work(ds, "neighbor_index")
    shutil.rmtree(wh.work(ds, distributed.SEARCH_DIR), ignore_errors=True)  # left by a killed Spark search
    log.info("neighbors %s: %s: %s", ds, "updating the lists" if mode == "incremental" else "searching every item",
             why)
    lists = ListsCollector(len(ids), ncfg.k + ncfg.margin)
    spark = (cfg, wh.fresh_work(ds, distributed.SEARCH_DIR), out) if on_spark else None
    with contextlib.nullcontext() if on_spark else StreamingParquet(out / "part-0.parquet",
                                                                    schemas.ITEM_NEIGHBORS) as writer:
        if mode == "incremental":
            stats = update.update_neighbors(vectors, ids, ncfg=ncfg, on_sale=on_sale, previous=kept, fresh=fresh,
                                            writer=writer, lists_out=lists, ds=ds, version=version,
                                            kept_index=update.load_index(wh.work(previous.ds, "neighbor_index")),
                                            index_out=index_out, spark=spark, **codes)
        else:
            def keep_index(index, plan, tuning):  # keyed by item, for the nights that carry it forward
                from lookalike.neighbors.search import item_keys, rekey

                keys = item_keys(ids)
                rekey(index, keys)
                update.save_index(index, keys[on_sale], index_out, {"kind": plan.kind, "knob": tuning["knob"],
                                                                    "value": int(tuning["value"]), "built_on": ds})

            stats = build_neighbors(vectors, ids, ncfg=ncfg, on_sale=on_sale, writer=writer, ds=ds, version=version,
                                    lists_out=lists, keep_index=keep_index, spark=spark, **codes)
    lists.save(lists_out)
    stats.update(mode=mode, why=why, previous_ds=previous.ds if previous else None, previous_seconds=reading,
                 change_share=None if change is None else round(change, 5))
    last = previous.stats["lists"] if mode == "incremental" else None  # what the next night's update starts from
    stats["lists"] = {"k": ncfg.k, "margin": ncfg.margin, "version": version, "settings": update.settings_of(ncfg),
                      "last_full": last["last_full"] if last else ds,
                      "changed_since_full": round(last.get("changed_since_full", 0.0) + change, 5) if last else 0.0}
    atomic_write_text(wh.work(ds, "neighbors_stats.json"), json.dumps(stats, indent=2))
    if stats["short_items"]:
        log.warning("neighbors %s: %d items have fewer than %d candidates and are left out",
                    ds, stats["short_items"], ncfg.k)
    log.info("neighbors %s: %d items x %d neighbours (%s), index %s, %s, %.1f s%s", ds, stats["rows"] // ncfg.k,
             ncfg.k, describe_mode(stats), "+".join(stats["index"]), describe_recall(stats), stats["seconds"],
             f" ({stats['spark']['tasks']} Spark tasks)" if "spark" in stats else "")
    return {"item_neighbors": str(out), "recall_at_k": stats["recall_at_k"], "mode": mode, "why": why}
