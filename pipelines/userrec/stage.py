"""The userrec stage: train the PixRec-style user model on the ds's interaction log, score it
leave-last-out against its single-modality, ID-only and popularity variants, and write the
per-user recommendations of the multimodal model.

Work outputs of the ds: ``user_recommendations`` (top ``userrec.k`` on-sale items per active user,
none they bought) and ``userrec_metrics`` (``eval_metrics`` rows, systems ``userrec_<variant>``);
``publish_user_recs`` publishes both atomically. Users without a usable step (every item they
touched is gone from the snapshot) get the most popular on-sale items.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from lookalike import registry, schemas
from lookalike.config import Config
from lookalike.errors import LookalikeError
from lookalike.evaluate.metrics import bootstrap_ci
from lookalike.events import read_events
from lookalike.siglip import embed_images, embed_texts, load_model
from lookalike.atomic import atomic_write_text
from lookalike.storage import ModelStore, Warehouse, write_parquet
from lookalike.userrec.data import (EVENT_TYPES, Sequences, build_sequences, co_interacted_pairs, history_batch, item_prompt,
                                    training_windows)
from lookalike.userrec.model import ItemTower, UserModel, UserTower, mixed_loss

log = logging.getLogger(__name__)

METRICS = (("recall", 1), ("recall", 10), ("mrr", None), ("ndcg", 10))


class UserRecError(LookalikeError):
    """The interaction log cannot train a user model (too few users or steps)."""


def _items(wh: Warehouse, ds: str) -> pa.Table:
    """Every item with a photo this ds: the catalogue, plus snapshot items no longer on sale."""
    columns = ["item_id", "title", "category", "brand", "price", "status", "image", "image_sha256"]
    catalog = pq.read_table(wh.work(ds, "catalog"), columns=columns, partitioning=None)
    snapshot = pq.read_table(wh.work(ds, "listings_snapshot"), columns=columns, partitioning=None)
    extra = snapshot.filter(pc.invert(pc.is_in(snapshot.column("item_id"), catalog.column("item_id"))))
    return pa.concat_tables([catalog, extra]).combine_chunks()


def feature_model(cfg: Config) -> tuple[str, str]:
    """(version, folder) of the SigLIP the item features come from: production, else the newest candidate."""
    store = ModelStore.at(cfg.models)
    version, why = registry.feature_model(store)
    log.info("userrec: item features from SigLIP %s (%s)", version, why)
    return version, str(store.version_dir(version))


def item_features(cfg: Config, wh: Warehouse, ds: str, items: pa.Table) -> tuple[np.ndarray, np.ndarray, str]:
    """SigLIP image embeddings (reused from the ds's embed output where it used this model) and
    embeddings of each item's prompt text, from the production model."""
    version, path = feature_model(cfg)
    loaded = load_model(path, version=version)
    ids = items.column("item_id").to_pylist()
    known: dict[str, np.ndarray] = {}
    embedded = wh.work(ds, "item_embeddings")
    if embedded.exists():
        table = pq.read_table(embedded, columns=["item_id", "model_version", "embedding"], partitioning=None)
        table = table.filter(pc.equal(table.column("model_version"), version))
        known = dict(zip(table.column("item_id").to_pylist(), np.asarray(table.column("embedding").to_pylist(),
                                                                            dtype=np.float32)))
    todo = [i for i, item in enumerate(ids) if item not in known]
    image = np.zeros((len(ids), loaded.model.config.vision_config.hidden_size), dtype=np.float32)
    for i, item in enumerate(ids):
        if item in known:
            image[i] = known[item]
    if todo:
        photos = items.column("image").take(pa.array(todo)).to_pylist()
        image[todo] = embed_images(loaded, photos)
    rows = items.select(["title", "category", "brand", "price"]).to_pylist()
    text = embed_texts(loaded, [item_prompt(**row) for row in rows])
    log.info("userrec %s: features of %d items (%d image embeddings reused from embed, %d computed), model %s",
             ds, len(ids), len(ids) - len(todo), len(todo), version)
    return image, text, version


def train_model(modality: str, image: np.ndarray, text: np.ndarray, train: Sequences, cfg: Config,
                progress=log.info) -> UserModel:
    """Train one variant of the user model on the training sequences (wall-clock capped)."""
    uc = cfg.userrec
    torch.manual_seed(uc.seed)
    generator = torch.Generator().manual_seed(uc.seed)
    rng = np.random.default_rng(uc.seed)
    model = UserModel(ItemTower(torch.from_numpy(image), torch.from_numpy(text), uc.dim, modality, uc.fusion,
                                uc.dropout),
                      UserTower(uc.dim, uc.max_len, uc.user_tower, uc.layers, uc.heads, uc.dropout))
    items, events, targets = (torch.from_numpy(a) for a in training_windows(train, uc.max_len))
    pairs = torch.from_numpy(co_interacted_pairs(train))
    if len(items) == 0:
        raise UserRecError("no user has two steps to learn from in the interaction window")
    steps_per_epoch = max(1, -(-len(items) // uc.batch_size))
    total = steps_per_epoch * uc.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=uc.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, uc.learning_rate, total_steps=total, pct_start=0.1)
    weights = {"user_item": uc.weight_user_item, "item_item": uc.weight_item_item, "image_text": uc.weight_image_text}
    deadline, started, step = time.monotonic() + uc.minutes * 60, time.monotonic(), 0
    model.train()
    for epoch in range(uc.epochs):
        order = rng.permutation(len(items))
        for start in range(0, len(order), uc.batch_size):
            rows = torch.from_numpy(order[start:start + uc.batch_size])
            pair_rows = torch.randint(0, max(1, len(pairs)), (uc.batch_size,), generator=generator)
            batch = {"items": items[rows], "events": events[rows], "targets": targets[rows],
                     "pairs": pairs[pair_rows] if len(pairs) else pairs}
            terms = mixed_loss(model, batch, weights, uc.temperature, len(image), uc.sampled_negatives, generator)
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            if time.monotonic() > deadline:
                break
        progress(f"userrec {modality}: epoch {epoch + 1}/{uc.epochs}, step {step}/{total}, "
                 + ", ".join(f"{name} {value.item():.3f}" for name, value in terms.items())
                 + f" ({time.monotonic() - started:.0f} s)")
        if time.monotonic() > deadline:
            progress(f"userrec {modality}: stopped at the {uc.minutes:g}-minute cap after {step} of {total} steps")
            break
    return model.eval()


@torch.inference_mode()
def user_scores(model: UserModel, seqs: Sequences, users: np.ndarray, max_len: int, chunk: int = 512):
    """Yield (rows, scores over every item) for the users of ``users``, ``chunk`` at a time."""
    catalogue = model.items(torch.arange(model.items.image.shape[0]))
    for start in range(0, len(users), chunk):
        part = users[start:start + chunk]
        items, events = history_batch(seqs, part, max_len)
        states = model.last_state(torch.from_numpy(items), torch.from_numpy(events))
        yield slice(start, start + len(part)), (states @ catalogue.T).numpy()


def target_ranks(score_chunks, targets: np.ndarray, seed: int = 0) -> np.ndarray:
    """0-based rank of each user's held-out item among all items (ties broken at random)."""
    rng = np.random.default_rng(seed)
    ranks = np.empty(len(targets), dtype=np.int64)
    for rows, scores in score_chunks:
        scores = scores + rng.uniform(0, 1e-6, size=scores.shape)
        own = scores[np.arange(scores.shape[0]), targets[rows]]
        ranks[rows] = (scores > own[:, None]).sum(axis=1)
    return ranks


def rank_metrics(ranks: np.ndarray) -> dict[tuple[str, int | None], np.ndarray]:
    """Per-user Recall@1, Recall@10, MRR and NDCG@10 from 0-based ranks (one relevant item)."""
    return {("recall", 1): (ranks < 1).astype(float), ("recall", 10): (ranks < 10).astype(float),
            ("mrr", None): 1.0 / (ranks + 1.0),
            ("ndcg", 10): np.where(ranks < 10, 1.0 / np.log2(ranks + 2.0), 0.0)}


def popularity(train: Sequences, n_items: int) -> np.ndarray:
    counts = np.zeros(n_items, dtype=np.float64)
    for items in train.items:
        np.add.at(counts, items, 1.0)
    return counts


def run_userrec(cfg: Config, ds: str) -> dict:
    wh = Warehouse.of(cfg)
    uc = cfg.userrec
    if not wh.work(ds, "interactions").exists():
        raise FileNotFoundError(f"no interaction log for ds={ds}: run `lookalike extract --ds {ds}` first")
    started = time.monotonic()
    items = _items(wh, ds)
    ids = items.column("item_id").to_pylist()
    index = {item: i for i, item in enumerate(ids)}
    events = read_events(wh, ds, uc.log_days)
    inputs = _inputs_key(cfg, items, events)
    previous = _previous(wh, ds, inputs)
    if previous is not None:
        log.info("userrec %s: same interactions, items, model and config as the last run of this ds; reusing its "
                 "recommendations and metrics (%s)", ds, previous["model_version"])
        return previous
    wh.work(ds, "userrec_stats.json").unlink(missing_ok=True)  # written last: its presence means complete outputs
    seqs = build_sequences(events, index)
    train, evaluated, targets = seqs.leave_last_out()
    if len(evaluated) < 10:
        raise UserRecError(f"only {len(evaluated)} users have two or more steps in the {uc.log_days} days before "
                           f"{ds}: too few to train and evaluate a user model")
    image, text, siglip_version = item_features(cfg, wh, ds, items)
    log.info("userrec %s: %d active users, %d evaluated (leave-last-out), %d training steps, %d items",
             ds, len(seqs.users), len(evaluated), sum(len(s) for s in train.items), len(ids))

    variants = [v.strip() for v in uc.variants.split(",") if v.strip()]
    if "multimodal" not in variants:
        variants.insert(0, "multimodal")  # the served model
    digest = hashlib.sha256(json.dumps(cfg.to_dict()["userrec"], sort_keys=True).encode()).hexdigest()[:8]
    version = f"{siglip_version}+userrec-{digest}"
    rows, summary, served = [], {}, None
    counts = popularity(train, len(ids))
    for variant in variants:
        t0 = time.monotonic()
        if variant == "popularity":
            chunks = [(slice(0, len(evaluated)), np.broadcast_to(counts, (len(evaluated), len(ids))))]
            model = None
        else:
            model = train_model(variant, image, text, train, cfg)
            chunks = user_scores(model, train, evaluated, uc.max_len)
        per_user = rank_metrics(target_ranks(chunks, targets, uc.seed))
        for (metric, k), values in per_user.items():
            lo, hi = bootstrap_ci(values, resamples=uc.bootstrap, seed=uc.seed)
            rows.append({"ds": ds, "system": f"userrec_{variant}", "model_version": version if model else None,
                         "metric": metric, "k": k, "value": float(values.mean()), "ci_low": lo, "ci_high": hi,
                         "n": len(values)})
        summary[variant] = {f"{m}@{k}" if k else m: round(float(v.mean()), 4) for (m, k), v in per_user.items()}
        log.info("userrec %s: %s — %s (%.0f s)", ds, variant,
                 ", ".join(f"{name} {value:.4f}" for name, value in summary[variant].items()), time.monotonic() - t0)
        if variant == "multimodal":
            served = model
    metrics_dir = wh.fresh_work(ds, "userrec_metrics")
    write_parquet(pa.Table.from_pylist(rows, schema=schemas.EVAL_METRICS), metrics_dir / "part-0.parquet")

    recs = recommend(served, seqs, items, counts, uc.k, uc.max_len)
    out = wh.fresh_work(ds, "user_recommendations")
    write_parquet(_recommendation_table(ds, version, seqs.users, ids, recs), out / "part-0.parquet")
    history = wh.fresh_work(ds, "user_history")
    write_parquet(_history_table(ds, seqs, ids, uc.max_len), history / "part-0.parquet")
    stats = {"model_version": version, "users": len(seqs.users), "evaluated": len(evaluated), "items": len(ids),
             "metrics": summary, "seconds": round(time.monotonic() - started, 1), "inputs": inputs}
    atomic_write_text(wh.work(ds, "userrec_stats.json"), json.dumps(stats, indent=2))
    log.info("userrec %s: recommendations for %d users → %s (%.0f s in all)", ds, len(seqs.users), out,
             stats["seconds"])
    return {"user_recommendations": str(out), "userrec_metrics": str(metrics_dir), **stats, "reused": False}


def _inputs_key(cfg: Config, items: pa.Table, events: pa.Table) -> str:
    """What the stage's outputs depend on: the user model's config, the serving SigLIP version,
    the items (photos by hash, texts, status) and the interaction window."""
    digest = hashlib.sha256(json.dumps({"userrec": cfg.to_dict()["userrec"], "model": feature_model(cfg)[0]},
                                       sort_keys=True).encode())
    for table in (items.drop_columns(["image"]), events):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        digest.update(sink.getvalue())
    return digest.hexdigest()


def _previous(wh: Warehouse, ds: str, inputs: str) -> dict | None:
    """The last run's result for ``ds`` when it was computed from the same inputs (reruns are free)."""
    stats_path = wh.work(ds, "userrec_stats.json")
    outputs = {name: wh.work(ds, name) for name in ("user_recommendations", "user_history", "userrec_metrics")}
    if not stats_path.exists() or not all(path.exists() for path in outputs.values()):
        return None
    stats = json.loads(stats_path.read_text())
    if stats.get("inputs") != inputs:
        return None
    return {"user_recommendations": str(outputs["user_recommendations"]),
            "userrec_metrics": str(outputs["userrec_metrics"]), **stats, "reused": True}


def recommend(model: UserModel, seqs: Sequences, items: pa.Table, counts: np.ndarray, k: int, max_len: int):
    """Per user: (item indices, scores) of the top ``k`` on-sale items they have not bought."""
    on_sale = np.asarray(pc.equal(items.column("status"), "on_sale").to_numpy(zero_copy_only=False))
    users = np.arange(len(seqs.users))
    with_history = users[[len(s) > 0 for s in seqs.items]]
    fallback = np.where(on_sale, counts, -np.inf)
    out: list[tuple[np.ndarray, np.ndarray]] = [None] * len(users)  # type: ignore[list-item]
    for rows, scores in user_scores(model, seqs, with_history, max_len):
        scores = np.where(on_sale[None, :], scores, -np.inf)
        for r, user in zip(range(scores.shape[0]), with_history[rows]):
            out[user] = _top(scores[r], seqs.purchased[user], k)
    for user in users:
        if out[user] is None:
            out[user] = _top(fallback, seqs.purchased[user], k)
    return out


def _top(scores: np.ndarray, bought: set[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = scores.copy()
    if bought:
        scores[list(bought)] = -np.inf
    top = np.argpartition(-scores, min(k, len(scores) - 1))[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    top = top[np.isfinite(scores[top])]
    return top, scores[top]


def _history_table(ds: str, seqs: Sequences, ids: list[str], max_len: int) -> pa.Table:
    names = {code: name for name, code in EVENT_TYPES.items()}
    user_col, step_col, item_col, event_col = [], [], [], []
    for user, items, events in zip(seqs.users, seqs.items, seqs.events):
        recent_items, recent_events = items[-max_len:][::-1], events[-max_len:][::-1]
        user_col += [user] * len(recent_items)
        step_col += list(range(1, len(recent_items) + 1))
        item_col += [ids[i] for i in recent_items]
        event_col += [names[int(e)] for e in recent_events]
    return pa.table({"ds": [ds] * len(user_col), "user_id": user_col, "step": pa.array(step_col, pa.int32()),
                     "item_id": item_col, "event": event_col}, schema=schemas.USER_HISTORY)


def _recommendation_table(ds: str, version: str, users: list[str], ids: list[str], recs) -> pa.Table:
    user_col, rank_col, item_col, score_col = [], [], [], []
    for user, (top, scores) in zip(users, recs):
        user_col += [user] * len(top)
        rank_col += list(range(1, len(top) + 1))
        item_col += [ids[i] for i in top]
        score_col += [float(s) for s in scores]
    return pa.table({"ds": [ds] * len(user_col), "user_id": user_col, "rank": pa.array(rank_col, pa.int32()),
                     "item_id": item_col, "score": pa.array(score_col, pa.float32()),
                     "model_version": [version] * len(user_col)}, schema=schemas.USER_RECOMMENDATIONS)
