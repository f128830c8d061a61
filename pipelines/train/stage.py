"""The train stage: fine-tune SigLIP on the ds's snapshot and register a candidate version.

The version name is a fingerprint of what decides the weights — the snapshot's (item_id,
image_sha256, text) rows, the model source and the training config — so rerunning a ds reuses
the model it already trained instead of training a near-copy.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from pipelines import registry
from pipelines.config import Config
from pipelines.siglip import ARCHITECTURES, Preprocess, build_config, init_siglip_head, save_model, train_tokenizer
from pipelines.storage import ModelStore, Warehouse
from pipelines.train.data import SnapshotTexts, is_validation, load_pairs, read_texts
from pipelines.train.loop import LoopConfig, retrieval_recall, train_siglip

log = logging.getLogger(__name__)


def snapshot_fingerprint(texts: SnapshotTexts) -> str:
    h = hashlib.sha256()
    for item_id, sha, text in sorted(zip(texts.item_ids, texts.shas, texts.texts)):
        h.update(f"{item_id}\t{sha}\t{text}\n".encode())
    return h.hexdigest()


def initial_model(cfg: Config, texts: list[str]):
    """(model, tokenizer, preprocess, architecture) from model.init: a named shape or a checkpoint dir."""
    from transformers import AutoTokenizer, SiglipModel

    from pipelines.siglip import quiet_transformers

    quiet_transformers()
    init = cfg.model.init
    if init in ARCHITECTURES:
        tokenizer = train_tokenizer(texts, cfg.train.vocab_size, cfg.train.max_text_length)
        config = build_config(init, vocab_size=len(tokenizer), max_text_length=cfg.train.max_text_length)
        torch.manual_seed(cfg.train.seed)
        model = SiglipModel(config)
        init_siglip_head(model)
        return model, tokenizer, Preprocess(ARCHITECTURES[init]["image_size"]), init
    path = Path(init)
    if not (path / "config.json").is_file():
        raise ValueError(f"model.init={init!r} is neither a named architecture ({', '.join(ARCHITECTURES)}) "
                         f"nor a Hugging Face checkpoint directory with a config.json")
    model = SiglipModel.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    pre_file = path / "preprocessor_config.json"
    preprocess = Preprocess.from_hf(json.loads(pre_file.read_text())) if pre_file.exists() \
        else Preprocess(model.config.vision_config.image_size)
    return model, tokenizer, preprocess, f"checkpoint:{path}"


def run_train(cfg: Config, ds: str, progress=log.info) -> dict[str, str]:
    """Train (or reuse) the candidate for ``ds``; returns {"model_version", "model_uri"}."""
    wh = Warehouse.at(cfg.warehouse)
    store = ModelStore.at(cfg.models)
    snapshot = wh.work(ds, "listings_snapshot")
    if not snapshot.exists():
        raise FileNotFoundError(f"no snapshot for ds={ds} at {snapshot}: run `lookalike extract --ds {ds}` first")
    tc = cfg.train
    texts = read_texts(snapshot, tc.text_template)
    fingerprint = hashlib.sha256(json.dumps(
        {"snapshot": snapshot_fingerprint(texts), "init": cfg.model.init,
         "train": {k: v for k, v in cfg.to_dict()["train"].items() if k != "threads"}},
        sort_keys=True).encode()).hexdigest()
    version = f"{ds.replace('-', '')}-{fingerprint[:10]}"
    out = store.version_dir(version)
    if (out / "lookalike.json").exists():
        progress(f"train: model {version} already trained on this snapshot with this config; reusing it")
        registry.register(store, version, json.loads((out / "lookalike.json").read_text()))
        return {"model_version": version, "model_uri": str(out)}

    if tc.threads:
        torch.set_num_threads(tc.threads)
    started = time.monotonic()
    model, tokenizer, preprocess, architecture = initial_model(cfg, texts.texts)
    pairs = load_pairs(snapshot, preprocess, texts)
    val_mask = np.array([is_validation(i, tc.val_fraction) for i in pairs.item_ids])
    train_pairs, val_pairs = pairs.subset(~val_mask), pairs.subset(val_mask)
    progress(f"train: {len(train_pairs.texts)} training pairs, {len(val_pairs.texts)} held out; "
             f"{architecture}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    before = retrieval_recall(model, val_pairs, tokenizer, preprocess, cfg.train.max_text_length)
    stats = train_siglip(model, tokenizer, preprocess, train_pairs, tc.max_text_length,
                         LoopConfig(max_steps=tc.max_steps, minutes=tc.minutes, batch_size=tc.batch_size,
                                    learning_rate=tc.learning_rate, weight_decay=tc.weight_decay,
                                    warmup_steps=tc.warmup_steps, seed=tc.seed, bf16=tc.bf16),
                         progress=progress)
    after = retrieval_recall(model, val_pairs, tokenizer, preprocess, cfg.train.max_text_length)
    progress(f"train: held-out image→title recall@1 {before['recall@1']:.3f} → {after['recall@1']:.3f}, "
             f"recall@5 {before['recall@5']:.3f} → {after['recall@5']:.3f}")
    metadata = {
        "version": version, "ds": ds, "architecture": architecture, "parent": None,
        "snapshot": {"uri": str(snapshot), "ds": ds, "pairs": len(pairs.texts), "fingerprint": fingerprint},
        "metrics": {"val_before": before, "val": after, **stats},
        "config": cfg.to_dict(), "trained_seconds": round(time.monotonic() - started, 1),
    }
    staging = out.with_name(f".{version}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    save_model(model, tokenizer, preprocess, staging, metadata)
    staging.rename(out)  # the version directory appears complete or not at all
    registry.register(store, version, metadata)
    return {"model_version": version, "model_uri": str(out)}
