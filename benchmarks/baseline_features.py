"""How the image baseline's features were chosen: colour and shape features on real product photos.

On ``../shared/data/fashion_products_small.parquet`` two disjoint splits by item id hash, each 30%
of the catalogue (about 13,000 products): ``dev``, on which the features and their weighting are
chosen, and ``held-out``, on which the choice is reported. Within a split each photo's top-5
neighbours by cosine are found among the others, and the share of neighbour slots with the same
``article_type`` (type@5) and the same ``base_colour`` (colour@5) is reported, with their mean
(the order of the table). Photos are decoded as the baseline decodes them (64 px; stretched to a
square as the old baseline did, or at their own aspect ratio, padded with their background).

Rows: the old baseline (4x4x4 histogram + 8x8 RGB thumbnail, standardised, PCA 64), each feature
alone, the colour + shape blends over a grid of weights and histograms, and the shipped baseline
(``pipelines/features.py``, PCA to ``evaluate.baseline_dim``).

    .venv/bin/python benchmarks/baseline_features.py --json baseline.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "fashion_products_small.parquet"


def splits(path: Path) -> dict[str, dict]:
    """{"dev", "held-out"}: each its photos (stretched and padded), article types and colours."""
    import pyarrow.parquet as pq

    from lookalike.siglip import Preprocess

    table = pq.read_table(path, columns=["item_id", "article_type", "base_colour", "image"])
    ids = np.array(table.column("item_id").to_pylist(), dtype=np.int64)
    bucket = (ids * 2654435761 % 2**32) % 10
    out = {}
    for name, rows in (("dev", np.flatnonzero(bucket >= 7)), ("held-out", np.flatnonzero(bucket < 3))):
        images = table.column("image").take(rows).to_pylist()
        out[name] = {"square": Preprocess(64).decode(images), "padded": Preprocess(64, pad=True).decode(images),
                     "type": np.array(table.column("article_type").take(rows).to_pylist(), dtype=object),
                     "colour": np.array([c or "" for c in table.column("base_colour").take(rows).to_pylist()],
                                        dtype=object)}
    return out


def agreement(vectors: np.ndarray, split: dict, k: int = 5) -> dict:
    """type@5 and colour@5: the share of each photo's top-k neighbour slots agreeing with it."""
    import faiss

    v = np.ascontiguousarray(vectors, np.float32)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    _, found = faiss.knn(v, v, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    own = np.arange(len(v))[:, None]
    top = np.array([row[row != i][:k] for i, row in zip(own[:, 0], found)])
    result = {f"{facet}@{k}": round(float((split[facet][top] == split[facet][:, None]).mean()), 4)
              for facet in ("type", "colour")}
    result["mean"] = round((result[f"type@{k}"] + result[f"colour@{k}"]) / 2, 4)
    return result


def old_baseline(square: np.ndarray, dim: int = 64) -> np.ndarray:
    """The image baseline before this measurement: a 4x4x4 RGB histogram (square roots of the shares)
    and the 8x8 RGB thumbnail of the stretched photo, each feature standardised, PCA to ``dim``."""
    from lookalike.features import colour_histogram

    n, s = square.shape[0], square.shape[1]
    step = s // 8
    thumb = square[:, :step * 8, :step * 8].reshape(n, 8, step, 8, step, 3).mean(axis=(2, 4)) / 255.0
    hist = colour_histogram(square, bins=4, foreground=None)  # the shares' square roots: unit rows already
    feats = np.concatenate([hist, thumb.reshape(n, -1)], axis=1).astype(np.float64)
    mean, scale = feats.mean(axis=0), feats.std(axis=0)
    scale[scale < 1e-6] = 1.0
    _, _, vt = np.linalg.svd((feats - mean) / scale, full_matrices=False)
    return (feats - mean) / scale @ vt[:dim].T


def candidates(split: dict) -> dict[str, np.ndarray]:
    """Every feature set compared, by name."""
    from lookalike import features as b

    padded = split["padded"]
    grey = b.grey_thumbnail(padded)
    rows = {"old baseline (stretched, standardised, PCA 64)": old_baseline(split["square"]),
            "grey thumbnail 16x16 alone": grey,
            "grey thumbnail 16x16, stretched": b.grey_thumbnail(split["square"]),
            "grey thumbnail 8x8 alone": b.grey_thumbnail(padded, 8)}
    hists = {}
    for bins in (4, 8):
        for foreground in (None, b.FOREGROUND):
            name = f"hist {bins}^3" + (" foreground" if foreground else " whole photo")
            hists[name] = b.colour_histogram(padded, bins, foreground)
            rows[f"{name} alone"] = hists[name]
    for name, hist in hists.items():
        for w in (0.3, 0.35, 0.4, 0.5, 0.6, 0.7):
            rows[f"{name} x {w:g} + grey 16x16"] = np.hstack([np.sqrt(w) * hist, np.sqrt(1 - w) * grey])
    hist = hists["hist 8^3 foreground"]
    rows["the baseline before gradients: hist 8^3 foreground x 0.35 + grey 16x16, PCA 64"] = \
        b.fit_projection(np.hstack([np.sqrt(0.35) * hist, np.sqrt(0.65) * grey]), 64).apply(
            np.hstack([np.sqrt(0.35) * hist, np.sqrt(0.65) * grey]))
    for cells in (4, 6, 8):
        gradients = b.gradient_histogram(padded, cells)
        rows[f"gradients {cells}x{cells}x9 alone"] = gradients
        for colour, shape, outline in ((0.35, 0.35, 0.3), (0.3, 0.35, 0.35), (0.35, 0.25, 0.4), (0.4, 0.2, 0.4)):
            rows[f"hist 8^3 fg x {colour:g} + grey x {shape:g} + gradients {cells}x{cells} x {outline:g}"] = np.hstack(
                [np.sqrt(colour) * hist, np.sqrt(shape) * grey, np.sqrt(outline) * gradients])
    rows["shipped: image_baseline_vectors (PCA 64)"] = b.image_baseline_vectors(padded, 64)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"{args.data} not found: this benchmark needs the Fashion catalogue (see its README)")
    from lookalike.tools.summary import format_table

    data = splits(args.data)
    results = {}
    for split in ("dev", "held-out"):
        for name, vectors in candidates(data[split]).items():
            results.setdefault(name, {})[split] = agreement(vectors, data[split])
    order = sorted(results, key=lambda name: -results[name]["dev"]["mean"])
    columns = ["features", "dev type@5", "dev colour@5", "dev mean", "held-out type@5", "held-out colour@5",
               "held-out mean"]
    print(format_table(columns, [(name, *(results[name][s][m] for s in ("dev", "held-out")
                                          for m in ("type@5", "colour@5", "mean"))) for name in order]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
