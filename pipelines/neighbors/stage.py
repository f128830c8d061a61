"""The neighbors stage: top-k similar on-sale items for every embedded catalogue item."""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import schemas
from pipelines.config import Config
from pipelines.neighbors.core import top_k_neighbors
from pipelines.storage import Warehouse, write_parquet

log = logging.getLogger(__name__)


def load_embeddings(path) -> tuple[np.ndarray, np.ndarray, str]:
    """(ids (N,), vectors (N, D) float32, model_version) from an item_embeddings folder."""
    table = pq.read_table(path, columns=["item_id", "model_version", "embedding"]).sort_by("item_id")
    if table.num_rows == 0:
        raise ValueError(f"no embeddings in {path}")
    ids = np.array(table.column("item_id").to_pylist(), dtype=object)
    flat = table.column("embedding").combine_chunks()
    dim = len(flat[0])
    vectors = flat.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    return ids, vectors, table.column("model_version")[0].as_py()


def run_neighbors(cfg: Config, ds: str) -> dict[str, str]:
    wh = Warehouse.at(cfg.warehouse)
    emb = wh.work(ds, "item_embeddings")
    if not emb.exists():
        raise FileNotFoundError(f"no embeddings for ds={ds} at {emb}: run `lookalike embed --ds {ds}` first")
    ids, vectors, version = load_embeddings(emb)
    status = dict(zip(*pq.read_table(wh.work(ds, "catalog"), columns=["item_id", "status"]).to_pydict().values()))
    on_sale = np.array([status.get(i) == "on_sale" for i in ids])
    k = cfg.neighbors.k
    nbr_ids, scores = top_k_neighbors(vectors, ids, k, candidate_mask=on_sale)
    complete = np.array([row[-1] is not None for row in nbr_ids])
    if (~complete).any():
        log.warning("neighbors: %d items have fewer than %d candidates and are left out", (~complete).sum(), k)
    n = int(complete.sum())
    table = pa.Table.from_pydict({
        "ds": [ds] * (n * k),
        "item_id": np.repeat(ids[complete], k).tolist(),
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n),
        "neighbor_id": nbr_ids[complete].ravel().tolist(),
        "score": scores[complete].ravel(),
        "model_version": [version] * (n * k),
    }, schema=schemas.ITEM_NEIGHBORS)
    out = wh.fresh_work(ds, "item_neighbors")
    write_parquet(table, out / "part-0.parquet")
    log.info("neighbors %s: %d items x %d neighbours", ds, n, k)
    return {"item_neighbors": str(out)}
