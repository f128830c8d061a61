"""Published nights made directly in a warehouse (real Parquet, real manifest switch) for the
hand-off tests: ``publish_night`` writes item_neighbors (and, with arms, an experiment's
item_neighbors_variants and experiment_variants; with users, user_recommendations) for a ds, each
list different from one seed to the next, so a reader can tell two nights apart."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from lookalike import schemas
from lookalike.storage import Warehouse, write_parquet

ARMS = {"control": (0, 5000), "treatment": (5000, 10000)}


def _neighbours(ids: list[str], k: int, rng) -> tuple[list, list, list, list]:
    items, ranks, neighbours, scores = [], [], [], []
    n = len(ids)
    for i, item in enumerate(ids):
        picked = rng.choice(n - 1, size=k, replace=False)
        picked = np.where(picked >= i, picked + 1, picked)  # never itself
        s = np.sort(rng.random(k).astype(np.float32))[::-1]
        items += [item] * k
        ranks += list(range(1, k + 1))
        neighbours += [ids[j] for j in picked]
        scores += list(s)
    return items, ranks, neighbours, scores


def night_tables(ds: str, *, items: int, k: int, seed: int, arms: bool = False, users: int = 0,
                 ids: list[str] | None = None) -> dict[str, pa.Table]:
    rng = np.random.default_rng(seed)
    ids = ids or [f"item-{i:06d}" for i in range(items)]
    out = {}
    item, rank, neighbour, score = _neighbours(ids, k, rng)
    base = {"ds": [ds] * len(item), "item_id": item, "rank": rank, "neighbor_id": neighbour, "score": score,
            "same_image": [False] * len(item), "model_version": ["v1"] * len(item)}
    out["item_neighbors"] = pa.table(base, schema=schemas.ITEM_NEIGHBORS)
    if arms:
        parts = []
        for variant in ARMS:
            item, rank, neighbour, score = _neighbours(ids, k, rng)
            parts.append(pa.table({"ds": [ds] * len(item), "item_id": item, "rank": rank, "neighbor_id": neighbour,
                                   "score": score, "same_image": [False] * len(item),
                                   "model_version": ["v1"] * len(item), "experiment": ["look"] * len(item),
                                   "variant": [variant] * len(item)}, schema=schemas.ITEM_NEIGHBORS_VARIANTS))
        out["item_neighbors_variants"] = pa.concat_tables(parts)
        rows = [{"ds": ds, "experiment": "look", "variant": v, "is_control": v == "control", "serve": "production",
                 "model_version": "v1", "share": 0.5, "salt": "look", "bucket_low": lo, "bucket_high": hi,
                 "start_ds": None, "end_ds": None} for v, (lo, hi) in ARMS.items()]
        out["experiment_variants"] = pa.Table.from_pylist(
            [{f.name: r.get(f.name) for f in schemas.EXPERIMENT_VARIANTS} for r in rows], schema=schemas.EXPERIMENT_VARIANTS)
    if users:
        user_ids = [f"user-{u:05d}" for u in range(users)]
        _, rank, recommended, score = _neighbours(ids, k, rng)
        n = users * k
        out["user_recommendations"] = pa.table({"ds": [ds] * n, "user_id": np.repeat(user_ids, k).tolist(),
                                                "rank": rank[:n], "item_id": recommended[:n], "score": score[:n],
                                                "model_version": ["v1"] * n}, schema=schemas.USER_RECOMMENDATIONS)
    return out


def publish_night(wh: Warehouse, ds: str, tables: dict[str, pa.Table]) -> str:
    """Commit ``tables`` as ds's partitions in one manifest switch; returns the run id."""
    publication = wh.begin(ds)
    for name, table in tables.items():
        path = write_parquet(table, wh.work_root / f"ds={ds}" / "test_publish" / name / "part-0.parquet")
        publication.add(name, [path], rows=table.num_rows)
    publication.commit(retain=14)
    return publication.run_id
