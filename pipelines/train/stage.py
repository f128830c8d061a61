"""The train stage: fine-tune SigLIP on the ds's snapshot and register a candidate version.

The version name is a fingerprint of what decides the weights — the snapshot's (item_id,
image_sha256, text) rows, the model source and the training config — so rerunning a ds reuses
the model it already trained instead of training a near-copy.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from lookalike import registry
from lookalike.atomic import atomic_path
from lookalike.config import Config
from lookalike.errors import ConfigError
from lookalike.siglip import (ARCHITECTURES, Preprocess, build_config, init_siglip_head, lowercase_if_expected,
                              save_model, train_tokenizer)
from lookalike.storage import ModelStore, Warehouse
from lookalike.ids import id_hash, is_validation
from lookalike.train.data import (DecodedCache, Pairs, PairStream, SnapshotTexts, StreamPlan, batches_from, fragments,
                                  group_ids, load_rows, read_texts)
from lookalike.train.distributed import World, init_from_env, shutdown
from lookalike.train.loop import Budget, Checkpoints, EarlyStopping, micro_batch, retrieval_recall, train_siglip

log = logging.getLogger(__name__)


def snapshot_fingerprint(texts: SnapshotTexts) -> str:
    h = hashlib.sha256()
    for item_id, sha, text in sorted(zip(texts.item_ids, texts.shas, texts.texts)):
        h.update(f"{item_id}\t{sha}\t{text}\n".encode())
    return h.hexdigest()


def _checkpoint_parent(path: Path) -> str | None:
    meta = path / "lookalike.json"
    return json.loads(meta.read_text()).get("version") if meta.exists() else None


def initial_model(cfg: Config, texts: list[str], world: World = World()):
    """(model, tokenizer, preprocess, architecture, parent) from model.init.

    A named architecture starts from scratch with a tokenizer trained offline on the texts (on
    rank 0, then shared, so every rank tokenises alike); a checkpoint directory, local or
    ``s3://``, brings its own weights, tokenizer and image preprocessing.
    """
    from transformers import AutoTokenizer, SiglipModel

    from lookalike.siglip import quiet_transformers

    quiet_transformers()
    init = cfg.model.init
    if init in ARCHITECTURES:
        tokenizer = train_tokenizer(texts, cfg.train.vocab_size, cfg.train.max_text_length) if world.is_main else None
        tokenizer = world.broadcast_object(tokenizer)
        config = build_config(init, vocab_size=len(tokenizer), max_text_length=cfg.train.max_text_length)
        torch.manual_seed(cfg.train.seed)
        model = SiglipModel(config)
        init_siglip_head(model)
        return model, tokenizer, Preprocess(ARCHITECTURES[init]["image_size"], pad=cfg.train.keep_aspect), init, None
    if init.startswith("s3://"):
        from lookalike.objectstore import local_model_dir

        if world.is_main:
            local_model_dir(init)  # one download per host; the others wait, then find it cached
        world.barrier()
        path = local_model_dir(init)
    elif HUB_NAME.fullmatch(init) and not Path(init).exists():
        if world.is_main:
            hub_checkpoint(init)  # one download per host into the Hugging Face cache
        world.barrier()
        path = hub_checkpoint(init)
    else:
        path = Path(init)
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.init={init!r} is neither a named architecture ({', '.join(ARCHITECTURES)}), "
                         f"a Hugging Face model name (org/name) nor a checkpoint directory with a config.json")
    check_checkpoint(path, init)
    model = SiglipModel.from_pretrained(path, dtype=torch.float32)
    tokenizer = lowercase_if_expected(AutoTokenizer.from_pretrained(path))
    pre_file = path / "preprocessor_config.json"
    preprocess = Preprocess.from_hf(json.loads(pre_file.read_text())) if pre_file.exists() \
        else Preprocess(model.config.vision_config.image_size)
    return model, tokenizer, preprocess, f"checkpoint:{init}", _checkpoint_parent(path)


HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")  # a Hugging Face model id: org/name


def hub_checkpoint(name: str) -> Path:
    """The folder of Hugging Face model ``name`` in the Hugging Face cache (``HF_HOME``), downloaded the
    first time; with the hub unreachable or ``HF_HUB_OFFLINE=1``, what the cache holds."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt"]  # config, weights, tokenizer: no other formats
    try:
        return Path(snapshot_download(name, allow_patterns=patterns))
    except RepositoryNotFoundError as exc:
        raise ConfigError(f"model.init={name!r}: no such model on the Hugging Face hub ({exc})") from exc
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise ConfigError(
            f"model.init={name!r} is not in the Hugging Face cache and the hub cannot be reached ({exc}); fetch it "
            f"once where the hub is reachable (`hf download {name}`, with the same HF_HOME), or download it "
            "to a folder or your bucket and point model.init there") from exc


def check_checkpoint(path: Path, init: str) -> None:
    """Refuse a checkpoint this pipeline cannot train: SigLIP 2 NaFlex (variable resolution and patch
    count) needs its own processor; the fixed-resolution SigLIP 2 checkpoints are plain SigLIP."""
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    if model_type == "siglip2":
        raise ConfigError(f"model.init={init!r} is a SigLIP 2 NaFlex checkpoint (model_type siglip2), which takes "
                          "images at their own resolution and patch count; Lookalike trains fixed-resolution "
                          "SigLIP: use a fixed-resolution checkpoint (e.g. google/siglip2-base-patch16-256)")
    if model_type != "siglip":
        raise ConfigError(f"model.init={init!r} is a {model_type!r} checkpoint, not SigLIP (model_type siglip)")


EARLY_STOP_MIN_PAIRS = 200  # held-out pairs needed before train.patience may stop a run

# Config keys that change how fast a run goes, never what it computes: not part of the version.
_NOT_RECIPE = {"threads", "loader_workers", "checkpoint_every"}


def model_version(cfg: Config, ds: str, snapshot_fp: str) -> str:
    fingerprint = hashlib.sha256(json.dumps(
        {"snapshot": snapshot_fp, "init": cfg.model.init, "shape": ARCHITECTURES.get(cfg.model.init),
         "train": {k: v for k, v in cfg.to_dict()["train"].items() if k not in _NOT_RECIPE}},
        sort_keys=True).encode()).hexdigest()
    return f"{ds.replace('-', '')}-{fingerprint[:10]}"


def loader_workers(configured: int, local_world_size: int) -> int:
    if configured >= 0:
        return configured
    return max(1, min(8, (os.cpu_count() or 2) // max(1, local_world_size) - 1))


def held_out(frags, snap: SnapshotTexts, val_mask: np.ndarray, groups: np.ndarray, preprocess: Preprocess,
             limit: int) -> Pairs:
    """Up to ``limit`` held-out pairs, chosen stably (by item id hash), decoded."""
    rows = np.flatnonzero(val_mask)
    if len(rows) > limit:
        keys = [id_hash(snap.item_ids[i]) for i in rows]
        rows = np.sort(rows[np.argsort(keys, kind="stable")[:limit]])
    return Pairs([snap.item_ids[i] for i in rows], load_rows(frags, rows, preprocess),
                 [snap.texts[i] for i in rows], groups[rows])


def run_train(cfg: Config, ds: str, progress=log.info) -> dict[str, str]:
    """Train (or reuse) the candidate for ``ds``; returns {"model_version", "model_uri"}.

    Under ``torchrun`` every rank calls this; rank 0 evaluates, saves and registers.
    """
    world = init_from_env()
    try:
        return _run_train(cfg, ds, world, progress if world.is_main else (lambda *_: None))
    finally:
        shutdown(world)


def _run_train(cfg: Config, ds: str, world: World, progress) -> dict[str, str]:
    wh = Warehouse.of(cfg)
    store = ModelStore.at(cfg.models)
    snapshot = wh.work(ds, "listings_snapshot")
    if not snapshot.exists():
        raise FileNotFoundError(f"no snapshot for ds={ds} at {snapshot}: run `lookalike extract --ds {ds}` first")
    tc = cfg.train
    texts = read_texts(snapshot, tc.text_template)
    snapshot_fp = snapshot_fingerprint(texts)
    version = model_version(cfg, ds, snapshot_fp)
    out = store.version_dir(version)
    if (out / "lookalike.json").exists():
        progress(f"train: model {version} already trained on this snapshot with this config; reusing it")
        if world.is_main:
            registry.register(store, version, json.loads((out / "lookalike.json").read_text()))
        return {"model_version": version, "model_uri": str(out)}

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the loader forks after tokenising
    if tc.threads:
        torch.set_num_threads(tc.threads)
    started = time.monotonic()
    model, tokenizer, preprocess, architecture, parent = initial_model(cfg, texts.texts, world)
    max_len = int(model.config.text_config.max_position_embeddings)  # a checkpoint's own text length
    frags = fragments(snapshot)
    groups = group_ids(texts.shas, texts.texts if tc.text_positives else None)
    val_mask = np.array([is_validation(i, tc.val_fraction) for i in texts.item_ids], dtype=bool)
    train_pairs = int((~val_mask).sum())
    steps_per_epoch = max(1, -(-train_pairs // tc.batch_size))
    max_steps = tc.max_steps or max(1, round(tc.epochs * steps_per_epoch))
    budget = Budget(max_steps, validate_every=max(1, round(tc.validate_every_epochs * steps_per_epoch))
                    if tc.validate_every_epochs > 0 else 0)
    micro = micro_batch(tc, world.size)
    plan = StreamPlan(frags, ~val_mask, seed=tc.seed, rank=world.rank, world_size=world.size)
    workers = loader_workers(tc.loader_workers, int(os.environ.get("LOCAL_WORLD_SIZE", world.size)))
    progress(f"train: {train_pairs} training pairs in {len(frags)} fragments, {int(val_mask.sum())} "
             f"held out; budget {max_steps} steps ({max_steps / steps_per_epoch:.1f} epochs) or {tc.minutes:g} min, "
             f"held-out recall checked every {budget.validate_every} steps; {architecture}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; "
             f"{world.size} rank(s) on {world.device.type} x {micro} pairs x {tc.grad_accum} micro-steps; "
             f"{workers} loader worker(s) per rank")
    val = held_out(frags, texts, val_mask, groups, preprocess, tc.val_max_items) if world.is_main else None
    before = retrieval_recall(model, val, tokenizer, preprocess, max_len) if world.is_main else {}
    model.train()

    cache = DecodedCache(len(texts.texts), preprocess.size, max_len, tc.decoded_cache_mb, ~val_mask)
    progress(f"train: decoded photos {'cached in shared memory' if cache.enabled else 'not cached'} "
             f"({cache.need_mb:.0f} MB needed, train.decoded_cache_mb={tc.decoded_cache_mb})")

    def stream(start: int) -> PairStream:
        return PairStream(frags, texts.texts, groups, plan, batch_size=micro, preprocess=preprocess,
                          tokenizer=tokenizer, max_text_length=max_len, start=start, cache=cache)

    def batches(start: int):
        return batches_from(stream, start, workers, world.device.type == "cuda", cache)

    checkpoints = Checkpoints(store.checkpoint_dir(version))
    # Recall on a few dozen pairs is noise: below EARLY_STOP_MIN_PAIRS the checks draw the curve, the budget decides.
    patience = tc.patience if world.is_main and len(val.texts) >= EARLY_STOP_MIN_PAIRS else 0
    early = EarlyStopping(lambda: retrieval_recall(model, val, tokenizer, preprocess, max_len), budget.validate_every,
                          patience) if world.is_main and budget.validate_every and len(val.texts) else None
    stats = train_siglip(model, batches, preprocess, tc, budget, world, checkpoints, progress=progress, fingerprint=version,
                         early=early)
    result = {"model_version": version, "model_uri": str(out)}
    if world.is_main:
        model.cpu()
        after = retrieval_recall(model, val, tokenizer, preprocess, max_len)
        progress(f"train: held-out image→title recall@1 {before['recall@1']:.3f} → {after['recall@1']:.3f}, "
                 f"recall@5 {before['recall@5']:.3f} → {after['recall@5']:.3f} ({len(val.texts)} pairs)")
        metadata = {
            "version": version, "ds": ds, "architecture": architecture, "parent": parent,
            "snapshot": {"uri": str(snapshot), "ds": ds, "pairs": len(texts.texts), "fingerprint": snapshot_fp},
            "metrics": {"val_before": before, "val": after, "val_pairs": len(val.texts), "world_size": world.size,
                        **stats},
            "config": cfg.to_public_dict(), "trained_seconds": round(time.monotonic() - started, 1),
        }
        for stale in out.parent.glob(f".{out.name}.*.tmp"):  # left by a save that was killed
            shutil.rmtree(stale, ignore_errors=True)
        with atomic_path(out) as staging:  # the version directory appears complete or not at all
            save_model(model, tokenizer, preprocess, staging, metadata)
        registry.register(store, version, metadata)
        shutil.rmtree(checkpoints.folder, ignore_errors=True)  # the saved model supersedes them
    world.barrier()
    return result
