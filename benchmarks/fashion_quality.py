"""Neighbour quality on real product photos: fine-tuned SigLIP vs the hand-made image baseline.

Loads ``../shared/data/fashion_products_small.parquet`` as a source that follows the contract
(``article_type`` as category, every item on sale, created over the 90 days before the ds),
runs the real extract → train → embed (Spark) → neighbors stages on it, and prints, for the
fine-tuned model and for the image baseline (colour histogram + 8x8 thumbnail, PCA), the share
of top-5 neighbours with the same article_type and with the same base_colour.

    .venv/bin/python benchmarks/fashion_quality.py --minutes 10 [--items 20000] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs._common import setup_logging  # noqa: E402
from pipelines.config import load_config  # noqa: E402
from pipelines.evaluate.baselines import image_baseline_vectors  # noqa: E402
from pipelines.neighbors.core import top_k_neighbors  # noqa: E402
from pipelines.sample.marketplace import SCHEMA_SQL  # noqa: E402
from pipelines.siglip import Preprocess  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion_products_small.parquet"
DS = "2026-11-21"


def build_source(data: Path, out: Path, items: int | None, seed: int, exclude: set[int] = frozenset()) \
        -> dict[str, dict]:
    """SQLite source + image folder from the Fashion parquet (less the ``exclude`` item ids);
    returns item_id → labels."""
    table = pq.read_table(data, columns=["item_id", "title", "article_type", "base_colour", "image"])
    if exclude:
        import pyarrow.compute as pc

        table = table.filter(pc.invert(pc.is_in(table.column("item_id"), pa.array(sorted(exclude)))))
    rng = np.random.default_rng(seed)
    order = rng.permutation(table.num_rows)[: items or table.num_rows]
    rows = table.take(order).to_pylist()
    images = out / "images"
    images.mkdir(parents=True)
    end = datetime.combine(date.fromisoformat(DS), datetime.min.time())
    listings, labels = [], {}
    for i, r in enumerate(rows):
        item_id = f"f{r['item_id']}"
        (images / f"{item_id}.jpg").write_bytes(r["image"])
        created = (end - timedelta(days=float(rng.uniform(0.01, 89.9)))).strftime("%Y-%m-%dT%H:%M:%S")
        listings.append((item_id, r["title"] or "", None, r["article_type"], None, None, "on_sale",
                         f"s{i % 500}", f"{item_id}.jpg", created, created))
        labels[item_id] = {"article_type": r["article_type"], "base_colour": r["base_colour"]}
    con = sqlite3.connect(out / "fashion.db")
    con.executescript(SCHEMA_SQL)
    con.executemany("insert into listings values (?,?,?,?,?,?,?,?,?,?,?)", listings)
    con.commit()
    con.close()
    return labels


def agreement(ids: np.ndarray, neighbours: np.ndarray, labels: dict[str, dict], key: str) -> float:
    """Share of top-5 neighbour slots whose ``key`` label equals the query's."""
    same = [labels[n][key] == labels[q][key] for q, row in zip(ids, neighbours) for n in row[:5] if n is not None]
    return float(np.mean(same))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--items", type=int, default=None, help="subsample (default: all 44k)")
    parser.add_argument("--minutes", type=float, default=10.0, help="training wall-clock budget")
    parser.add_argument("--model", default="small", help="model.init (a named architecture)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"{args.data} not found: this benchmark needs ../shared/data (see its README)", file=sys.stderr)
        return 2
    setup_logging()
    with tempfile.TemporaryDirectory(prefix="lookalike-fashion-") as tmp:
        root = Path(tmp)
        started = time.monotonic()
        labels = build_source(args.data, root / "source", args.items, args.seed)
        env = {
            "LOOKALIKE_SOURCE__URL": f"sqlite:///{root / 'source' / 'fashion.db'}",
            "LOOKALIKE_SOURCE__IMAGES": str(root / "source" / "images"),
            "LOOKALIKE_WAREHOUSE": str(root / "warehouse"),
            "LOOKALIKE_MODELS": str(root / "models"),
            "LOOKALIKE_MODEL__INIT": args.model,
            "LOOKALIKE_TRAIN__MINUTES": str(args.minutes),
            "LOOKALIKE_TRAIN__MAX_STEPS": "1000000",  # the wall-clock budget decides
            "LOOKALIKE_NEIGHBORS__K": "5",
        }
        cfg = load_config(environ=env)
        from pipelines.embed.stage import run_embed
        from pipelines.extract.stage import run_extract
        from pipelines.neighbors.stage import run_neighbors
        from pipelines.train.stage import run_train

        run_extract(cfg, DS)
        model = run_train(cfg, DS)
        run_embed(cfg, DS, model_uri=model["model_uri"])
        nbrs = pq.read_table(run_neighbors(cfg, DS)["item_neighbors"]).sort_by([("item_id", "ascending"),
                                                                              ("rank", "ascending")])
        ids = np.array(nbrs.column("item_id").to_pylist(), dtype=object)[::5]
        model_nbrs = np.array(nbrs.column("neighbor_id").to_pylist(), dtype=object).reshape(-1, 5)

        catalog = pq.read_table(Path(cfg.warehouse) / "_work" / f"ds={DS}" / "catalog",
                                columns=["item_id", "image"]).sort_by("item_id")
        cat_ids = np.array(catalog.column("item_id").to_pylist(), dtype=object)
        base_vecs = image_baseline_vectors(Preprocess(64).decode(catalog.column("image").to_pylist()), 64)
        base_nbrs, _ = top_k_neighbors(base_vecs.astype(np.float32), cat_ids, 5)
        meta = json.loads((Path(model["model_uri"]) / "lookalike.json").read_text())
        results = {
            "items": len(cat_ids),
            "train_minutes": args.minutes,
            "train_steps": meta["metrics"]["steps"],
            "samples_per_s": meta["metrics"]["samples_per_s"],
            "val_pairs": meta["metrics"]["val_pairs"],
            "val_recall@1": meta["metrics"]["val"]["recall@1"],
            "val_recall@5": meta["metrics"]["val"]["recall@5"],
            "untrained_val_recall@1": meta["metrics"]["val_before"]["recall@1"],
            "untrained_val_recall@5": meta["metrics"]["val_before"]["recall@5"],
            "fine_tuned": {"article_type@5": agreement(ids, model_nbrs, labels, "article_type"),
                           "base_colour@5": agreement(ids, model_nbrs, labels, "base_colour")},
            "image_baseline": {"article_type@5": agreement(cat_ids, base_nbrs, labels, "article_type"),
                               "base_colour@5": agreement(cat_ids, base_nbrs, labels, "base_colour")},
            "wall_seconds": round(time.monotonic() - started, 1),
        }
    print()
    print(f"Fashion catalogue: {results['items']} items, {results['train_minutes']} training minutes "
          f"({results['train_steps']} steps, {results['samples_per_s']:.0f} pairs/s)")
    print(f"held-out image→title over {results['val_pairs']} items: R@1 {results['val_recall@1']:.3f} "
          f"R@5 {results['val_recall@5']:.3f} (untrained: R@1 {results['untrained_val_recall@1']:.3f} "
          f"R@5 {results['untrained_val_recall@5']:.3f})")
    print(f"{'system':<16}{'article_type@5':>16}{'base_colour@5':>16}")
    for system in ("fine_tuned", "image_baseline"):
        r = results[system]
        print(f"{system:<16}{r['article_type@5']:>16.3f}{r['base_colour@5']:>16.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
