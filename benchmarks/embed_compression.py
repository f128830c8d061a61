"""What embedding compression costs in offline quality: nDCG@5 (and P@1, MRR) of the serving
model's embeddings as they are, PCA-projected to smaller sizes, and stored as float16.

Runs the evaluate stage's protocol (logged similar-items clicks) on a ds that `lookalike run`
has extracted, with the PCA fitted on a catalogue sample as the embed stage does.

    .venv/bin/python benchmarks/embed_compression.py [--config FILE] [--ds YYYY-MM-DD] [--dims 32 16]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


from lookalike.config import load_config
from lookalike.projection import fit_projection, to_float16
from lookalike.embed.stage import resolve_model
from lookalike.evaluate.stage import _items, build_queries, score_system
from lookalike.siglip import embed_pixels, load_model
from lookalike.storage import Warehouse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config")
    parser.add_argument("--ds", help="default: the latest published ds")
    parser.add_argument("--dims", type=int, nargs="+", default=[32, 16])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    wh = Warehouse.of(cfg)
    ds = args.ds or wh.latest_ds("item_neighbors")
    if not ds or not wh.work(ds, "interactions").exists():
        print("run `make demo` (or `lookalike run`) first: this needs an extracted ds", file=sys.stderr)
        return 2
    version, path = resolve_model(cfg, None)
    loaded = load_model(path)
    items = _items(wh, ds)
    ids = np.array(items["item_id"], dtype=object)
    index = {item: i for i, item in enumerate(items["item_id"])}
    queries = build_queries(pq.read_table(wh.work(ds, "interactions")).to_pydict(), index,
                            cfg.evaluate.min_candidates)
    full = embed_pixels(loaded.model, loaded.preprocess.decode(items["image"]), loaded.preprocess)
    catalog = set(pq.read_table(wh.work(ds, "catalog"), columns=["item_id"]).column(0).to_pylist())
    sample = full[[i for i, item in enumerate(items["item_id"]) if item in catalog][: cfg.embed.pca_sample]]
    variants = {f"full ({full.shape[1]}-d float32)": full,
                f"float16 ({full.shape[1]}-d)": to_float16(full).astype(np.float32)}
    for dim in args.dims:
        variants[f"PCA {full.shape[1]}→{dim}"] = fit_projection(sample, dim).apply(full)
        variants[f"PCA {full.shape[1]}→{dim} + float16"] = to_float16(variants[f"PCA {full.shape[1]}→{dim}"]
                                                                      ).astype(np.float32)
    results = {}
    for name, vecs in variants.items():
        per_query = score_system(lambda s, c, v=vecs: v[c] @ v[s], queries, ids)
        results[name] = {"ndcg@5": float(per_query[("ndcg", 5)].mean()),
                         "p@1": float(per_query[("precision", 1)].mean()),
                         "mrr": float(per_query[("mrr", None)].mean())}
    base = results[next(iter(results))]["ndcg@5"]
    print(f"model {version}, ds {ds}, {len(queries)} source items with clicks")
    print(f"{'embedding':<28}{'nDCG@5':>9}{'vs full':>9}{'P@1':>8}{'MRR':>8}")
    for name, r in results.items():
        print(f"{name:<28}{r['ndcg@5']:>9.4f}{(r['ndcg@5'] / base - 1) * 100:>+8.1f}%{r['p@1']:>8.4f}{r['mrr']:>8.4f}")
    if args.json:
        args.json.write_text(json.dumps({"model_version": version, "ds": ds, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
