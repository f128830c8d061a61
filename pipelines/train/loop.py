"""The fine-tuning loop: SigLIP on image–title pairs with the sigmoid loss, one or many ranks.

- Data parallel under ``torchrun`` (DDP; NCCL on GPUs, gloo on CPU) with negatives from the
  whole global batch (:mod:`lookalike.train.loss`).
- AdamW with weight decay on matrices only (norms, biases, embeddings and the loss head are
  spared), linear warmup then cosine decay, gradient clipping, gradient accumulation.
- bf16 autocast on CUDA (``precision: auto``), optional on CPU; optional freezing of the text
  tower and of the lower vision blocks; optional gradient checkpointing.
- Recipe switches, each measured on real photos (docs/models.md): recolouring, random resized
  crops, an image–image positive term (two views of one photo, as in SLIP), and FLIP's patch
  dropout (:class:`PatchDropout`).
- Seeded: the batches (:class:`lookalike.train.data.StreamPlan`), the augmentation (one
  generator per step) and the schedule are functions of the step, so a run resumed from a
  checkpoint ends with the parameters an uninterrupted run reaches. The schedule follows
  whichever budget binds, steps or wall-clock minutes; only the step budget is reproducible.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from lookalike import faults
from lookalike.atomic import atomic_path
from lookalike.config import TrainConfig
from lookalike.errors import ConfigError
from lookalike.siglip import Preprocess, embed_pixels, tokenize
from lookalike.train.data import Pairs
from lookalike.train.distributed import World, mean_over_ranks
from lookalike.train.loss import global_sigmoid_loss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Budget:
    """What the loop takes besides ``TrainConfig``: the budget in steps the stage derived from it
    (``train.epochs`` over the snapshot's pairs, or ``train.max_steps``)."""
    max_steps: int
    validate_every: int = 0  # steps between held-out recall checks (EarlyStopping); 0 = none
    progress_every: int = 100


def micro_batch(cfg: TrainConfig, world_size: int) -> int:
    """Pairs per rank per forward pass: ``train.batch_size`` is global (all ranks, all micro-steps)."""
    per = cfg.batch_size // (world_size * cfg.grad_accum)
    if per < 1 or per * world_size * cfg.grad_accum != cfg.batch_size:
        raise ConfigError(f"train.batch_size={cfg.batch_size} must be a multiple of world size ({world_size}) "
                          f"x train.grad_accum ({cfg.grad_accum})")
    return per


@dataclass
class EarlyStopping:
    """Held-out image→title recall every ``every`` steps (``validate()`` → {"recall@1", "recall@5"},
    on the main rank): training stops after ``patience`` checks in a row without a gain in Recall@5
    above ``min_delta``, and ends with the best weights seen. The checks, with their wall and
    step counts, are the run's learning curve. ``patience`` 0: checks and curve only."""
    validate: Callable[[], dict]
    every: int
    patience: int = 0
    min_delta: float = 0.002
    best: float = float("-inf")
    best_step: int = 0
    since: int = 0
    curve: list = field(default_factory=list)
    best_state: dict | None = None

    def due(self, step: int, max_steps: int) -> bool:
        return self.every > 0 and step % self.every == 0 and step < max_steps

    def check(self, model, step: int, minutes: float) -> bool:
        """Score the model after ``step`` steps; True when patience has run out."""
        scores = self.validate()
        model.train()
        self.curve.append({"step": step, "minutes": round(minutes, 2), **{k: round(v, 4) for k, v in scores.items()}})
        if scores["recall@5"] > self.best + self.min_delta:
            self.best, self.best_step, self.since = scores["recall@5"], step, 0
            if self.patience > 0:
                self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            self.since += 1
        return self.patience > 0 and self.since >= self.patience

    def finish(self, model, step: int, minutes: float) -> None:
        """Score the last weights too; keep the best of all checks."""
        if self.curve and self.curve[-1]["step"] == step:
            last = self.curve[-1]["recall@5"]
        else:
            self.check(model, step, minutes)
            last = self.curve[-1]["recall@5"]
        if self.patience > 0 and self.best_state is not None and last < self.best:
            model.load_state_dict(self.best_state)
        self.best_state = None

    def state(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "since": self.since, "curve": list(self.curve),
                "best_state": self.best_state}

    def restore(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def freeze(model, *, text: bool, vision_layers: int) -> int:
    """Freeze the text tower and/or the patch embedding plus the lowest vision blocks; returns frozen params."""
    frozen = []
    if text:
        frozen += list(model.text_model.parameters())
    if vision_layers > 0:
        layers = model.vision_model.encoder.layers
        if vision_layers > len(layers):
            raise ConfigError(f"train.freeze_vision_layers={vision_layers} but the vision tower has {len(layers)} blocks")
        frozen += list(model.vision_model.embeddings.parameters())
        for layer in layers[:vision_layers]:
            frozen += list(layer.parameters())
    for p in frozen:
        p.requires_grad_(False)
    return sum(p.numel() for p in frozen)


def cosine_lr(step: int, *, base: float, warmup: int, progress: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to 0 as ``progress`` goes 0 → 1."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def step_generator(*key: int) -> torch.Generator:
    """A CPU generator seeded from (seed, step, micro-step, rank): augmentation needs no saved state."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0] >> 1))


def recolour(pixels: torch.Tensor, gen: torch.Generator, share: float) -> torch.Tensor:
    """Channel-permute ``share``/2 of the photos and turn ``share``/2 grey, so the model cannot
    lean on colour alone (colour is what a histogram already captures)."""
    b = pixels.shape[0]
    u = torch.rand(b, generator=gen).to(pixels.device)
    order = torch.rand(b, 3, generator=gen).argsort(dim=1).to(pixels.device)  # a random permutation each
    permuted = torch.gather(pixels, 3, order[:, None, None, :].expand_as(pixels))
    luma = pixels.float() @ torch.tensor([0.299, 0.587, 0.114], device=pixels.device)
    grey = luma.round().clamp(0, 255).to(torch.uint8)[..., None].expand_as(pixels)
    pick = u[:, None, None, None]
    return torch.where(pick < share / 2, permuted, torch.where(pick < share, grey, pixels))


def augment(pixels: torch.Tensor, gen: torch.Generator, colour: float = 0.0, crop_scale: float = 1.0) -> torch.Tensor:
    """(B, S, S, 3) uint8 → same, randomly flipped, recoloured with probability ``colour``, and
    either shifted by up to S/8 (edge-padded; ``crop_scale`` 1) or cut to a random resized crop."""
    b, s = pixels.shape[0], pixels.shape[1]
    flip = (torch.rand(b, generator=gen) < 0.5).to(pixels.device)
    pixels = torch.where(flip[:, None, None, None], pixels.flip(2), pixels)
    if colour > 0:
        pixels = recolour(pixels, gen, colour)
    if crop_scale < 1:
        return resized_crop(pixels, gen, crop_scale)
    pad = s // 8
    padded = torch.nn.functional.pad(pixels.permute(0, 3, 1, 2).float(), (pad, pad, pad, pad), mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()  # one shift per batch: cheap
    return padded[:, :, dy:dy + s, dx:dx + s].permute(0, 2, 3, 1).to(torch.uint8)


def resized_crop(pixels: torch.Tensor, gen: torch.Generator, min_scale: float,
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Inception-style random resized crops, one per photo: an area of ``min_scale``..1 of the
    photo and an aspect ratio in ``ratio`` (log-uniform), clipped to the photo, resampled
    bilinearly to the same size (one batched ``grid_sample``)."""
    b = pixels.shape[0]
    area = min_scale + (1 - min_scale) * torch.rand(b, generator=gen)
    aspect = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(b, generator=gen))
    w = torch.sqrt(area * aspect).clamp(max=1.0)  # as fractions of the side
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (torch.rand(b, generator=gen) * 2 - 1) * (1 - w)  # centres in [-1, 1], crop inside the photo
    cy = (torch.rand(b, generator=gen) * 2 - 1) * (1 - h)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w, cx, h, cy
    x = pixels.permute(0, 3, 1, 2).float()
    grid = torch.nn.functional.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    out = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.round().clamp(0, 255).permute(0, 2, 3, 1).to(torch.uint8)


class PatchDropout:
    """FLIP (Li et al., "Scaling Language-Image Pre-training via Masking", CVPR 2023): while training,
    keep a random ``1 - share`` of each photo's patch tokens after the position embedding, so a
    step costs fewer FLOPs per pair; evaluation and serving see every token. A forward hook on the
    vision embeddings of a Hugging Face SigLIP (its attention-pooling head takes any token count);
    ``gen`` is set per micro-step so the masks are functions of the step like the rest of the
    augmentation."""

    def __init__(self, model, share: float):
        self.share, self.gen = share, None
        embeddings = model.vision_model.embeddings
        self.handle = embeddings.register_forward_hook(self._drop)

    def _drop(self, module, inputs, tokens: torch.Tensor) -> torch.Tensor:
        if not module.training or self.share <= 0 or self.gen is None:
            return tokens
        b, n, d = tokens.shape
        keep = max(1, round(n * (1 - self.share)))
        order = torch.rand(b, n, generator=self.gen).argsort(dim=1)[:, :keep].to(tokens.device)
        return torch.gather(tokens, 1, order[..., None].expand(b, keep, d))

    def remove(self) -> None:
        self.handle.remove()


# The image–image term's fixed head: the SigLIP initialisation (t = 10, b = -10), i.e. SimCLR's
# temperature 0.1 with the sigmoid's prior that most pairs are negative.
IMAGE_PAIR_SCALE, IMAGE_PAIR_BIAS = math.log(10.0), -10.0


def retrieval_recall(model, pairs: Pairs, tokenizer, preprocess: Preprocess, max_len: int,
                     ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Image→title Recall@k over ``pairs``: a hit retrieves a text of the image's own group."""
    if len(pairs.texts) == 0:
        return {f"recall@{k}": float("nan") for k in ks}
    model.eval()
    device = next(model.parameters()).device
    img = embed_pixels(model, pairs.pixels, preprocess)
    txt = []
    with torch.inference_mode():
        for s in range(0, len(pairs.texts), 512):
            ids = tokenize(tokenizer, pairs.texts[s:s + 512], max_len).to(device)
            feats = model.get_text_features(input_ids=ids).pooler_output.float()
            txt.append(torch.nn.functional.normalize(feats, dim=-1).cpu().numpy())
    sims = img @ np.concatenate(txt).T  # (N, N)
    order = np.argsort(-sims, axis=1)
    hits = pairs.groups[order] == pairs.groups[:, None]
    return {f"recall@{k}": float(hits[:, :k].any(axis=1).mean()) for k in ks}


class Checkpoints:
    """``step-NNNNNNN.pt`` files in one folder, each written atomically; the newest two are kept."""

    def __init__(self, folder: Path, keep: int = 2):
        self.folder, self.keep = Path(folder), keep

    def save(self, step: int, state: dict) -> Path:
        path = self.folder / f"step-{step:07d}.pt"
        for stale in self.folder.glob(".step-*.pt.*.tmp"):  # a save killed before its rename
            stale.unlink(missing_ok=True)
        # a reader sees the whole checkpoint or none
        with atomic_path(path, before_rename=lambda: faults.point("train.mid_checkpoint")) as tmp:
            torch.save(state, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        for old in sorted(self.folder.glob("step-*.pt"))[:-self.keep]:
            old.unlink()
        return path

    def latest(self) -> Path | None:
        found = sorted(self.folder.glob("step-*.pt"))
        return found[-1] if found else None

    def load(self, path: Path) -> dict:
        return torch.load(path, map_location="cpu", weights_only=True)


def _autocast(device: torch.device, precision: str):
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def train_siglip(model, batches: Callable[[int], Iterator[dict]], preprocess: Preprocess, cfg: TrainConfig,
                 budget: Budget, world: World = World(), checkpoints: Checkpoints | None = None,
                 progress: Callable[[str], None] | None = None, fingerprint: str = "",
                 early: EarlyStopping | None = None) -> dict:
    """Train ``model`` in place (on ``world.device``).

    ``batches(k)`` yields this rank's micro-batches from index ``k`` on (see ``PairStream``).
    Resumes from the newest checkpoint in ``checkpoints`` made with the same ``fingerprint``
    and world size. ``early`` (on the main rank; None on the others) checks held-out recall and
    may stop before the budget. Returns {"steps", "seconds", "samples_per_s", "final_loss",
    "resumed_from", "stopped", "curve", "best_step"}.
    """
    torch.manual_seed(cfg.seed)
    micro_batch(cfg, world.size)  # rejects a global batch that does not divide into ranks x micro-steps
    model.to(world.device)
    frozen = freeze(model, text=cfg.freeze_text, vision_layers=cfg.freeze_vision_layers)
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.learning_rate, betas=(0.9, 0.95),
                            fused=cfg.fused_optimizer or None)
    start_step, elapsed_before, losses = 0, 0.0, []
    resumed = checkpoints.latest() if checkpoints else None
    if resumed is not None:
        state = checkpoints.load(resumed)
        if state["fingerprint"] == fingerprint and state["world_size"] == world.size:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            start_step, elapsed_before, losses = state["step"], state["elapsed"], list(state["losses"])
            if early is not None and state.get("early"):
                early.restore(state["early"])
            if progress:
                progress(f"train: resuming from {resumed.name} (step {start_step}/{budget.max_steps})")
        else:
            log.warning("train: ignoring %s (made by another configuration or world size)", resumed)
            resumed = None
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[world.device.index] if world.device.type == "cuda" else None) if world.distributed else None
    forward = ddp or model
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.compile:
        forward = torch.compile(forward)

    dropout = PatchDropout(model, cfg.patch_dropout) if cfg.patch_dropout > 0 else None
    pair_scale = torch.tensor(IMAGE_PAIR_SCALE, device=world.device)
    pair_bias = torch.tensor(IMAGE_PAIR_BIAS, device=world.device)
    started = time.monotonic() - elapsed_before
    wall = cfg.minutes * 60
    step, stopped = start_step, "steps"
    stream = iter(batches(start_step * cfg.grad_accum))
    if progress and world.is_main and frozen:
        progress(f"train: {frozen / 1e6:.2f}M parameters frozen")
    for step in range(start_step, budget.max_steps):
        done = max(step / budget.max_steps, (time.monotonic() - started) / wall)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, base=cfg.learning_rate, warmup=cfg.warmup_steps, progress=done)
        step_loss = 0.0
        for m in range(cfg.grad_accum):
            batch = next(stream)
            pixels = batch["pixels"].to(world.device, non_blocking=True)
            gen = step_generator(cfg.seed, step, m, world.rank)
            x = preprocess.normalise(augment(pixels, gen, cfg.colour_augment, cfg.crop_scale))
            if cfg.image_positive > 0:  # a second view of every photo, in the same forward pass
                x = torch.cat([x, preprocess.normalise(augment(pixels, gen, cfg.colour_augment, cfg.crop_scale))])
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if dropout is not None:
                dropout.gen = gen
            groups = batch["groups"].to(world.device)
            sync = contextlib.nullcontext() if ddp is None or m == cfg.grad_accum - 1 else ddp.no_sync()
            with sync:
                with _autocast(world.device, cfg.precision):
                    out = forward(pixel_values=x, input_ids=batch["input_ids"].to(world.device, non_blocking=True))
                # The head in float32: the loss sums B x world·B log-sigmoids.
                images = out.image_embeds.float()
                loss = global_sigmoid_loss(images[:len(groups)], out.text_embeds.float(), model.logit_scale,
                                           model.logit_bias, groups)
                if cfg.image_positive > 0:
                    loss = loss + cfg.image_positive * global_sigmoid_loss(
                        images[:len(groups)], images[len(groups):], pair_scale, pair_bias, groups)
                loss = loss / cfg.grad_accum
                loss.backward()
            step_loss += loss.item()
        if cfg.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(step_loss)
        elapsed = time.monotonic() - started
        if progress and world.is_main and (step + 1) % budget.progress_every == 0:
            rate = (step + 1 - start_step) * cfg.batch_size / max(1e-9, elapsed - elapsed_before)
            left = min((budget.max_steps - step - 1) * cfg.batch_size / rate, wall - elapsed)
            progress(f"train: step {step + 1}/{budget.max_steps} loss {np.mean(losses[-budget.progress_every:]):.3f} "
                     f"({rate:.0f} pairs/s, ~{max(0, left):.0f}s left)")
        patience_out = False
        if budget.validate_every and (step + 1) % budget.validate_every == 0 and step + 1 < budget.max_steps:
            if early is not None:
                patience_out = early.check(model, step + 1, elapsed / 60)
                if progress:
                    c = early.curve[-1]
                    progress(f"train: step {step + 1} held-out image→title recall@1 {c['recall@1']:.3f} "
                             f"recall@5 {c['recall@5']:.3f} (best {early.best:.3f} at step {early.best_step})")
            if world.distributed:
                patience_out = mean_over_ranks(float(patience_out), world) > 0
        if checkpoints and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 \
                and step + 1 < budget.max_steps:
            if world.is_main:
                checkpoints.save(step + 1, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                            "step": step + 1, "elapsed": elapsed, "losses": losses[-200:],
                                            "fingerprint": fingerprint, "world_size": world.size,
                                            "early": early.state() if early is not None else None})
            world.barrier()
        out_of_time = elapsed > wall
        if world.distributed:  # every rank stops at the same step
            out_of_time = mean_over_ranks(float(out_of_time), world) > 0
        if out_of_time or patience_out:
            stopped = "minutes" if out_of_time else "patience"
            if world.is_main:
                if out_of_time:
                    log.warning("train: wall-clock budget of %.1f min reached at step %d/%d", cfg.minutes, step + 1,
                                budget.max_steps)
                else:
                    log.info("train: held-out recall@5 has not improved for %d checks: stopping at step %d/%d, "
                             "best at step %d", early.patience, step + 1, budget.max_steps, early.best_step)
            break
    del stream
    if dropout is not None:
        dropout.remove()
    seconds = time.monotonic() - started
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_disable()
    for p in model.parameters():
        p.requires_grad_(True)
    if early is not None:
        early.finish(model, step + 1, seconds / 60)
    model.eval()
    trained_steps = step + 1 - start_step
    return {"steps": step + 1, "seconds": round(seconds, 1),
            "samples_per_s": round(trained_steps * cfg.batch_size / max(1e-9, seconds - elapsed_before), 1),
            "final_loss": float(np.mean(losses[-50:])) if losses else float("nan"),
            "resumed_from": resumed.name if resumed else None, "stopped": stopped,
            "curve": early.curve if early is not None else [], "best_step": early.best_step if early else None}
