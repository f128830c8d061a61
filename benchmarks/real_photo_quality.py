"""Neighbour quality on real photos held out from training: learned embedding vs colour histogram.

On ``../shared/data/fashion_products_small.parquet``: a stable split by item id keeps
``--holdout`` items (default 5,000) out of training entirely. The real extract and train stages
run on the rest (``article_type`` as category, every item on sale) with a wall-clock budget of
``--minutes``; then, within the held-out items only, each item's top-5 neighbours are found

- with the learned image embedding (the trained model, preprocessing as saved with it),
- with a plain colour histogram (4x4x4 RGB bins of the whole photo, square-rooted, cosine),
- with the image baseline the nightly evaluation and serving use (``features.py``), fitted
  on the held-out photos here,

- with the text baseline (TF-IDF of the titles) and the learned model reading the title too
  (``--text``), and with the image baseline before gradient histograms (refitted here),

and the share of neighbour slots agreeing on article_type and on base_colour is reported (the
Fashion data has no product groups, so variant@5 cannot be measured on it), with
image→title Recall@1/@5 on (up to 2,000 of) the held-out items, before and after training, and
the training's wall and CPU minutes. Recipe switches are train.* config keys given with --set.
With ``--defaults`` the shipped config trains (its own budget, early stopping, learning curve),
and the night goes on: evaluate, embed with what the serving rule picks, neighbours, publish;
then the learned model, the image baseline as fitted for serving and the served system are
scored on the held-out photos.

    .venv/bin/python benchmarks/real_photo_quality.py --defaults --json defaults.json
    .venv/bin/python benchmarks/real_photo_quality.py --minutes 10 --json out.json
    .venv/bin/python benchmarks/real_photo_quality.py --minutes 10 --set colour_augment=0.5 keep_aspect=true
    .venv/bin/python benchmarks/real_photo_quality.py --minutes 8 --recipe shipped: crops:crop_scale=0.4 \
        flip:patch_dropout=0.5

``--recipe`` trains each named recipe in turn on the same extract, with the same wall-clock
budget, and prints them side by side with their CPU-minutes (run it on an otherwise idle machine).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import resource
import sqlite3
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


from lookalike.orchestration.jobs import setup_logging
from lookalike.sample.marketplace import SCHEMA_SQL

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion_products_small.parquet"
DS = "2026-11-21"


def build_source(table: pa.Table, out: Path, items: int | None, exclude: set[int]) -> None:
    """SQLite source + image folder from the Fashion rows, less the ``exclude`` item ids."""
    table = table.filter(pc.invert(pc.is_in(table.column("item_id"), pa.array(sorted(exclude)))))
    rng = np.random.default_rng(0)
    order = rng.permutation(table.num_rows)[: items or table.num_rows]
    rows = table.take(order).to_pylist()
    images = out / "images"
    images.mkdir(parents=True)
    end = datetime.combine(date.fromisoformat(DS), datetime.min.time())
    listings = []
    for i, r in enumerate(rows):
        item_id = f"f{r['item_id']}"
        (images / f"{item_id}.jpg").write_bytes(r["image"])
        created = (end - timedelta(days=float(rng.uniform(0.01, 89.9)))).strftime("%Y-%m-%dT%H:%M:%S")
        listings.append((item_id, r["title"] or "", None, r["article_type"], None, None, "on_sale",
                         f"s{i % 500}", f"{item_id}.jpg", created, created, r.get("base_colour")))
    con = sqlite3.connect(out / "fashion.db")
    con.executescript(SCHEMA_SQL)
    con.execute("alter table listings add column colour text")  # the optional column: evaluated beside category
    con.executemany("insert into listings values (?,?,?,?,?,?,?,?,?,?,?,?)", listings)
    con.commit()
    con.close()


def holdout_ids(ids: list[int], n: int) -> set[int]:
    """The ``n`` items with the smallest hash of their id: the same on every run."""
    return set(sorted(ids, key=lambda i: hashlib.sha256(f"holdout:{i}".encode()).digest())[:n])


def agreement(vectors: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Share of top-k neighbour slots (self excluded) whose label equals the query's: exact
    cosine search (the held-out split is a few thousand items, one matrix product)."""
    v = np.asarray(vectors, dtype=np.float32)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)  # a copy: the caller's stays
    scores = v @ v.T
    np.fill_diagonal(scores, -np.inf)
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return float(np.mean(labels[top] == labels[:, None]))


def agreement_sparse(vectors, labels: np.ndarray, k: int = 5) -> float:
    """``agreement`` of unit sparse rows (TF-IDF), one block of queries at a time."""
    hits = []
    for start in range(0, vectors.shape[0], 1000):
        scores = (vectors[start:start + 1000] @ vectors.T).toarray()
        scores[np.arange(len(scores)), np.arange(start, start + len(scores))] = -np.inf
        scores += 1e-6 * np.random.default_rng(start).random(scores.shape)  # titles that tie: no order by position
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        hits.append(labels[top] == labels[start:start + len(scores), None])
    return float(np.mean(np.concatenate(hits)))


def item_texts(template: str | None, rows: list[dict]) -> list[str | None]:
    """Each held-out item's text as a system with ``template`` reads it (the article type as its category)."""
    from lookalike.serving import item_texts as texts

    return texts(template, [{"title": r["title"], "category": r["article_type"]} for r in rows])


def old_baseline(padded: np.ndarray, dim: int) -> np.ndarray:
    """The image baseline before gradients: foreground 8³ histogram x 0.35 + 16x16 grey thumbnail, PCA."""
    from lookalike.features import colour_histogram, grey_thumbnail
    from lookalike.projection import fit_projection

    feats = np.hstack([np.sqrt(0.35) * colour_histogram(padded), np.sqrt(0.65) * grey_thumbnail(padded)])
    return fit_projection(feats, dim).apply(feats)


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def registry_baseline(cfg) -> str:
    from lookalike import registry
    from lookalike.storage import ModelStore

    return registry.baseline(ModelStore.at(cfg.models))


def night(cfg, model_uri: str) -> dict:
    """The rest of the week's first night as the DAGs run it: evaluate the candidate (no clicks on
    these photos: by shared category), then embed what the serving rule picks, search, publish."""
    from lookalike.embed.stage import run_embed
    from lookalike.evaluate.stage import run_evaluate
    from lookalike.neighbors.stage import run_neighbors
    from lookalike.publish.stage import run_publish

    decision = run_evaluate(cfg, DS, model_uri)
    embedded = run_embed(cfg, DS)
    run_neighbors(cfg, DS)
    run_publish(cfg, DS)
    return {**embedded["served"], "path": embedded["model_uri"], "decision": decision["decision"]}


def parse_recipe(text: str) -> tuple[str, list[str]]:
    """``name:key=value,key=value`` (``name:`` alone: no overrides) → (name, ["key=value", …])."""
    name, _, rest = text.partition(":")
    overrides = [item for item in rest.split(",") if item]
    if not name or any("=" not in item for item in overrides):
        raise argparse.ArgumentTypeError(f"expected NAME:KEY=VALUE[,KEY=VALUE…], got {text!r}")
    return name, overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--minutes", type=float, default=10.0, help="training wall-clock budget")
    parser.add_argument("--holdout", type=int, default=5000, help="items never trained on, searched among")
    parser.add_argument("--items", type=int, default=None, help="subsample the training items (smoke runs)")
    parser.add_argument("--model", default="small", help="model.init")
    parser.add_argument("--shape", nargs="*", default=[], metavar="KEY=INT",
                        help="change the named architecture (hidden, layers, heads, mlp, image_size, patch, text_layers)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="train.* overrides")
    parser.add_argument("--recipe", nargs="*", type=parse_recipe, default=[], metavar="NAME:KEY=VALUE,…",
                        help="train several recipes one after another, each with the same budget on the same "
                             "extract (on top of --set), and print them side by side")
    parser.add_argument("--hybrid", nargs="*", type=float, default=[], metavar="W",
                        help="also score learned+baseline hybrids with these weights on the learned part")
    parser.add_argument("--text", nargs="*", type=float, default=[0.3, 0.5, 0.7], metavar="T",
                        help="also score the learned model reading each item's title at these text weights")
    parser.add_argument("--defaults", action="store_true",
                        help="the shipped config as `lookalike train` applies it, then evaluate, embed, neighbors and "
                             "publish; scores the learned, baseline and served systems (--minutes/--model ignored)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"{args.data} not found: this benchmark needs ../shared/data (see its README)", file=sys.stderr)
        return 2
    if args.defaults and args.recipe:
        parser.error("--recipe compares recipes at a fixed budget; --defaults runs the shipped config alone")
    setup_logging()
    from lookalike.siglip import ARCHITECTURES

    if args.shape:  # a variant of the named shape, registered for this process only
        variant = dict(ARCHITECTURES[args.model], **{k: int(v) for k, v in (s.split("=") for s in args.shape)})
        args.model = f"{args.model}[{','.join(args.shape)}]"
        ARCHITECTURES[args.model] = variant
    table = pq.read_table(args.data, columns=["item_id", "title", "article_type", "base_colour", "image"])
    held = holdout_ids(table.column("item_id").to_pylist(), args.holdout)
    recipes = args.recipe or [("as set", [])]
    results = []
    with tempfile.TemporaryDirectory(prefix="lookalike-real-") as tmp:
        root = Path(tmp)
        build_source(table, root / "source", args.items, exclude=held)
        held_rows = [r for r in table.to_pylist() if r["item_id"] in held]
        for i, (name, overrides) in enumerate(recipes):
            result = train_and_score(args, root, held_rows, [*args.set, *overrides], models=f"models-{i}",
                                     extract=i == 0)
            results.append({"recipe": name, **result})
            report(result, args)
    if len(results) > 1:
        compare(results)
    if args.json:
        args.json.write_text(json.dumps(results if args.recipe else results[0], indent=2))
    return 0


def train_and_score(args, root: Path, rows: list[dict], overrides: list[str], models: str, extract: bool) -> dict:
    """Train one recipe on the source under ``root`` (extracting it first when ``extract``) and
    score it, with the baselines, on the held-out ``rows``."""
    from lookalike.config import load_config
    from lookalike import features
    from lookalike.features import colour_histogram, image_baseline_vectors
    from lookalike.extract.images import prepare_image
    from lookalike.extract.stage import run_extract
    from lookalike.siglip import Preprocess, embed_pixels, embed_texts, load_model
    from lookalike.serving import text_template as serving_template
    from lookalike.train.data import Pairs, group_ids, listing_text
    from lookalike.train.loop import retrieval_recall
    from lookalike.train.stage import run_train

    env = {"LOOKALIKE_SOURCE__URL": f"sqlite:///{root / 'source' / 'fashion.db'}",
           "LOOKALIKE_SOURCE__IMAGES": str(root / "source" / "images"),
           "LOOKALIKE_WAREHOUSE": str(root / "warehouse"), "LOOKALIKE_MODELS": str(root / models),
           "LOOKALIKE_AIRFLOW__HOME": str(root / "airflow")}
    if not args.defaults:  # a recipe experiment: its own model, a fixed wall-clock budget
        env.update({"LOOKALIKE_MODEL__INIT": args.model, "LOOKALIKE_TRAIN__MINUTES": str(args.minutes),
                    "LOOKALIKE_TRAIN__MAX_STEPS": "1000000", "LOOKALIKE_TRAIN__VAL_FRACTION": "0.02",
                    "LOOKALIKE_TRAIN__PATIENCE": "0"})
    for item in overrides:
        key, _, value = item.partition("=")
        env[f"LOOKALIKE_TRAIN__{key.upper()}"] = value
    cfg = load_config(environ=env)
    if extract:
        run_extract(cfg, DS)
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    model = run_train(cfg, DS)
    cpu_min, wall_min = (cpu_seconds() - cpu0) / 60, (time.monotonic() - wall0) / 60
    meta = json.loads((Path(model["model_uri"]) / "lookalike.json").read_text())
    loaded = load_model(model["model_uri"])
    served = night(cfg, model["model_uri"]) if args.defaults else None

    photos = [prepare_image(r["image"], size=cfg.extract.image_size, max_pixels=10**8, min_side=8) for r in rows]
    keep = [i for i, p in enumerate(photos) if not p.reason]
    rows, jpegs = [rows[i] for i in keep], [photos[i].jpeg for i in keep]
    types = np.array([r["article_type"] for r in rows], dtype=object)
    colours = np.array([r["base_colour"] for r in rows], dtype=object)
    pixels = loaded.preprocess.decode(jpegs)
    square = Preprocess(64).decode(jpegs)
    padded = features.preprocess().decode(jpegs)  # as the image baseline decodes: the aspect ratio kept
    systems = {"learned": embed_pixels(loaded.model, pixels, loaded.preprocess),
               "colour_histogram": colour_histogram(square, bins=4, foreground=None),  # 4x4x4 of the whole photo
               "image baseline (refitted here)": image_baseline_vectors(padded, 64)}
    if served is not None:  # what the night fitted and served, not refitted here
        from lookalike import serving
        from lookalike.storage import ModelStore

        store = ModelStore.at(cfg.models)
        for name, folder in (("image baseline (as served)", store.baseline_dir(registry_baseline(cfg))),
                             (f"served: {served['version']}", Path(served["path"]))):
            embedder = serving.load_embedder(str(folder))
            systems[name] = embedder.embed([embedder.decode(j) for j in jpegs], 256, item_texts(embedder.reads, rows))
    systems["image baseline before gradients (refitted here)"] = old_baseline(padded, 64)
    from lookalike.evaluate.baselines import text_baseline_vectors

    text = text_baseline_vectors([r["title"] or "" for r in rows])
    systems["text baseline (TF-IDF titles)"] = text
    model_texts = embed_texts(loaded, [t or "" for t in item_texts(serving_template(loaded.path), rows)])
    for t in args.text:  # unit((1 − t)·photo + t·title), from the same model
        from lookalike.serving import with_text

        systems[f"learned + title t={t:g}"] = with_text(systems["learned"], model_texts,
                                                       np.array([bool(r["title"]) for r in rows]), t)
    for w in args.hybrid:  # cosine = w·learned + (1 − w)·baseline
        systems[f"hybrid w={w:g}"] = np.concatenate(
            [np.sqrt(w) * _unit(systems["learned"]),
             np.sqrt(1 - w) * _unit(systems["image baseline (refitted here)"])], axis=1)
    quality = {name: {"article_type@5": agreement(v, types), "base_colour@5": agreement(v, colours)}
               for name, v in systems.items() if name != "text baseline (TF-IDF titles)"}
    quality["text baseline (TF-IDF titles)"] = {"article_type@5": agreement_sparse(text, types),
                                                "base_colour@5": agreement_sparse(text, colours)}
    texts = [listing_text(cfg.train.text_template, {"title": r["title"], "category": r["article_type"]})
             for r in rows[:2000]]
    pairs = Pairs([str(r["item_id"]) for r in rows[:2000]], pixels[:2000], texts,
                  group_ids([hashlib.sha256(j).hexdigest() for j in jpegs[:2000]], texts))
    recall = retrieval_recall(loaded.model, pairs, loaded.tokenizer, loaded.preprocess, loaded.max_text_length)
    return {"defaults": args.defaults, "served": served, "stopped": meta["metrics"].get("stopped"),
            "curve": meta["metrics"].get("curve"),
            "minutes": cfg.train.minutes, "overrides": overrides, "model": cfg.model.init, "held_out_items": len(rows),
            "train_items": meta["snapshot"]["pairs"], "steps": meta["metrics"]["steps"],
            "samples_per_s": meta["metrics"]["samples_per_s"], "train_wall_minutes": round(wall_min, 2),
            "train_cpu_minutes": round(cpu_min, 2), "quality": quality,
            "held_out_recall@1": recall["recall@1"], "held_out_recall@5": recall["recall@5"]}


def report(result: dict, args) -> None:
    """One run: its budget, learning curve, held-out recall and every system's agreement."""
    quality, n = result["quality"], result["held_out_items"]
    print(f"\nReal photos: trained on {result['train_items']} items for {result['train_wall_minutes']:.1f} min wall / "
          f"{result['train_cpu_minutes']:.1f} CPU-min ({result['steps']} steps, {result['samples_per_s']:.0f} pairs/s, "
          f"stopped by {result['stopped']}); {n} held-out items; "
          f"{'the shipped defaults' if args.defaults else 'overrides: ' + (' '.join(result['overrides']) or 'none')}")
    for point in result["curve"] or []:
        print(f"  learning curve: step {point['step']:>6} at {point['minutes']:5.1f} min: held-out image→title "
              f"R@1 {point['recall@1']:.3f} R@5 {point['recall@5']:.3f}")
    if result["served"]:
        print(f"served system: {result['served']['version']} ({result['served']['why']})")
    print(f"held-out image→title R@1 {result['held_out_recall@1']:.3f} R@5 {result['held_out_recall@5']:.3f} "
          f"({min(2000, n)} items)")
    width = max(22, *(len(name) + 2 for name in quality))
    base = quality.get("image baseline (as served)", quality["image baseline (refitted here)"])
    print(f"{'system':<{width}}{'article_type@5':>16}{'base_colour@5':>16}{'type vs baseline':>18}{'colour vs baseline':>20}")
    for name, q in quality.items():
        print(f"{name:<{width}}{q['article_type@5']:>16.3f}{q['base_colour@5']:>16.3f}"
              f"{q['article_type@5'] / base['article_type@5']:>17.3f}x{q['base_colour@5'] - base['base_colour@5']:>+20.3f}")


def compare(results: list[dict]) -> None:
    """The recipes side by side at their (equal) budget, each against the first and the baseline."""
    first, base = results[0]["quality"]["learned"], results[0]["quality"]["image baseline (refitted here)"]
    width = max(10, *(len(r["recipe"]) + 2 for r in results))
    print(f"\nRecipes at {results[0]['minutes']:g} training minutes each (learned embedding, held-out photos; "
          f"the image baseline: type {base['article_type@5']:.3f}, colour {base['base_colour@5']:.3f})")
    print(f"{'recipe':<{width}}{'CPU-min':>8}{'steps':>7}{'pairs/s':>8}{'R@5':>7}{'type@5':>8}{'colour@5':>9}"
          f"{'type vs 1st':>12}{'colour vs 1st':>14}  overrides")
    for r in results:
        q = r["quality"]["learned"]
        print(f"{r['recipe']:<{width}}{r['train_cpu_minutes']:>8.1f}{r['steps']:>7}{r['samples_per_s']:>8.0f}"
              f"{r['held_out_recall@5']:>7.3f}{q['article_type@5']:>8.3f}{q['base_colour@5']:>9.3f}"
              f"{q['article_type@5'] / first['article_type@5']:>11.3f}x{q['base_colour@5'] - first['base_colour@5']:>+14.3f}"
              f"  {' '.join(r['overrides']) or '-'}")


if __name__ == "__main__":
    sys.exit(main())
