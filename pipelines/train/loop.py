"""The fine-tuning loop: SigLIP on image–title pairs with the sigmoid loss.

AdamW with weight decay on matrices only (norms, biases, embeddings' scale and the loss head
are spared), linear warmup then cosine decay, gradient clipping, bf16 autocast, and a step
budget capped by wall-clock minutes. Seeded: the same data, config and thread count give the
same parameters.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from pipelines.siglip import Preprocess, embed_pixels, tokenize
from pipelines.train.data import Pairs
from pipelines.train.loss import SigmoidLoss, positive_mask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopConfig:
    max_steps: int
    minutes: float
    batch_size: int
    learning_rate: float
    weight_decay: float
    warmup_steps: int
    seed: int
    bf16: bool


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def cosine_lr(step: int, *, base: float, warmup: int, progress: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to 0 as ``progress`` goes 0 → 1."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def augment(pixels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(B, S, S, 3) uint8 → same, randomly flipped and shifted by up to S/8 (edge-padded)."""
    b, s = pixels.shape[0], pixels.shape[1]
    flip = torch.rand(b, generator=gen) < 0.5
    pixels = torch.where(flip[:, None, None, None], pixels.flip(2), pixels)
    pad = s // 8
    padded = torch.nn.functional.pad(pixels.permute(0, 3, 1, 2).float(), (pad, pad, pad, pad), mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()  # one shift per batch: cheap
    return padded[:, :, dy:dy + s, dx:dx + s].permute(0, 2, 3, 1).to(torch.uint8)


def retrieval_recall(model, pairs: Pairs, tokenizer, preprocess: Preprocess, max_len: int,
                     ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Image→title Recall@k over ``pairs``: a hit retrieves a text of the image's own group."""
    if len(pairs.texts) == 0:
        return {f"recall@{k}": float("nan") for k in ks}
    model.eval()
    img = embed_pixels(model, pairs.pixels, preprocess)
    with torch.inference_mode():
        ids = tokenize(tokenizer, pairs.texts, max_len)
        txt = torch.nn.functional.normalize(model.get_text_features(input_ids=ids).pooler_output.float(), dim=-1)
    sims = img @ txt.numpy().T  # (N, N)
    order = np.argsort(-sims, axis=1)
    hits = pairs.groups[order] == pairs.groups[:, None]
    return {f"recall@{k}": float(hits[:, :k].any(axis=1).mean()) for k in ks}


def train_siglip(model, tokenizer, preprocess: Preprocess, train: Pairs, max_len: int, cfg: LoopConfig,
                 progress=None) -> dict:
    """Train ``model`` in place; returns {"steps", "seconds", "samples_per_s", "final_loss"}."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model.train()
    loss_fn = SigmoidLoss()
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.learning_rate, betas=(0.9, 0.95))
    token_ids = tokenize(tokenizer, train.texts, max_len)  # (N, L)
    pixels = torch.from_numpy(train.pixels)
    groups = torch.from_numpy(train.groups)
    n = len(train.texts)
    batch = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // batch)
    deadline = time.monotonic() + cfg.minutes * 60
    started = time.monotonic()
    step, perm, losses = 0, None, []
    for step in range(cfg.max_steps):
        if step % steps_per_epoch == 0:
            perm = torch.from_numpy(rng.permutation(n))
        idx = perm[(step % steps_per_epoch) * batch:(step % steps_per_epoch + 1) * batch]
        # Progress through whichever budget binds first, steps or wall-clock, so the schedule
        # still decays to zero when training is stopped by the clock.
        done = max(step / cfg.max_steps, (time.monotonic() - started) / (cfg.minutes * 60))
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, base=cfg.learning_rate, warmup=cfg.warmup_steps, progress=done)
        x = preprocess.normalise(augment(pixels[idx], gen))
        with torch.autocast("cpu" if not x.is_cuda else "cuda", dtype=torch.bfloat16, enabled=cfg.bf16):
            out = model(pixel_values=x, input_ids=token_ids[idx])
        # The head is applied in float32: the loss sums B² log-sigmoids.
        loss = loss_fn(out.image_embeds.float(), out.text_embeds.float(), model.logit_scale, model.logit_bias,
                       positive_mask(groups[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if progress and (step + 1) % 100 == 0:
            elapsed = time.monotonic() - started
            left = min(elapsed / (step + 1) * (cfg.max_steps - step - 1), deadline - time.monotonic())
            progress(f"train: step {step + 1}/{cfg.max_steps} loss {np.mean(losses[-100:]):.3f} "
                     f"({(step + 1) * batch / elapsed:.0f} pairs/s, ~{max(0, left):.0f}s left)")
        if time.monotonic() > deadline:
            log.warning("train: wall-clock budget of %.1f min reached at step %d/%d", cfg.minutes, step + 1,
                        cfg.max_steps)
            break
    seconds = time.monotonic() - started
    model.eval()
    return {"steps": step + 1, "seconds": round(seconds, 1), "samples_per_s": round((step + 1) * batch / seconds, 1),
            "final_loss": float(np.mean(losses[-50:])) if losses else float("nan")}
