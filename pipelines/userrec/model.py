"""The dual-tower user model (PixRec): an item tower over frozen SigLIP features, a causal user
tower over the item sequence, and the mixed contrastive objective.

Notation: vectors are L2-normalised, ``s(a, b) = a·b / τ``, and InfoNCE over a query ``q``, its
positive ``p`` and candidates ``C`` (``p`` ∈ ``C``) is

    ℓ(q, p, C) = −log( exp s(q, p) / Σ_{c∈C} exp s(q, c) )

- **user → next item**: ``q`` = the user state after step t, ``p`` = the item of step t + 1,
  ``C`` = every target in the batch plus ``sampled_negatives`` items drawn uniformly from the
  catalogue; a candidate that *is* the positive item (drawn twice) is masked out, never counted
  as a negative.
- **item ↔ item**: for pairs (a, b) of items co-interacted within a session, the symmetric
  ℓ(a, b, B) + ℓ(b, a, A) over the batch's pairs, halved.
- **image ↔ text** (optional): the same symmetric form between the image and the text projection
  of one item (the batch's items as negatives).

The objective is ``w_ui·L_ui + w_ii·L_ii + w_it·L_it``. Each term is checked against a hand
computation in ``tests/userrec/test_model.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from lookalike.errors import ConfigError

MODALITIES = ("multimodal", "text", "image", "id")


def info_nce(queries: torch.Tensor, candidates: torch.Tensor, positive: torch.Tensor, temperature: float,
             same_item: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ℓ(q_i, candidates[positive_i], candidates) over the rows of ``queries``.

    ``same_item`` (Q, C) bool marks candidates that are the query's positive item under another
    column (duplicates): they are excluded from the denominator.
    """
    logits = queries @ candidates.T / temperature
    if same_item is not None:
        own = F.one_hot(positive, candidates.shape[0]).bool()
        logits = logits.masked_fill(same_item & ~own, float("-inf"))
    return F.cross_entropy(logits, positive)


def symmetric_info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float,
                       same_item: torch.Tensor | None = None) -> torch.Tensor:
    """(ℓ(a_i, b_i, B) + ℓ(b_i, a_i, A)) / 2, averaged over i."""
    target = torch.arange(a.shape[0], device=a.device)
    backward_mask = same_item.T if same_item is not None else None
    return (info_nce(a, b, target, temperature, same_item) + info_nce(b, a, target, temperature, backward_mask)) / 2


class ItemTower(nn.Module):
    """Item vectors from frozen SigLIP image and prompt-text embeddings (or from an ID table).

    ``multimodal`` fuses the two projections: ``gated`` = g·h_img + (1 − g)·h_txt with
    g = σ(W[h_img; h_txt]) per dimension; ``concat`` = MLP([h_img; h_txt]).
    """

    def __init__(self, image: torch.Tensor, text: torch.Tensor, dim: int, modality: str, fusion: str,
                 dropout: float = 0.1):
        super().__init__()
        if modality not in MODALITIES:
            raise ConfigError(f"modality must be one of {MODALITIES}, got {modality!r}")
        if fusion not in ("gated", "concat"):
            raise ConfigError(f"userrec.fusion must be gated or concat, got {fusion!r}")
        self.modality, self.fusion = modality, fusion
        self.register_buffer("image", image.float(), persistent=False)
        self.register_buffer("text", text.float(), persistent=False)
        n = image.shape[0]

        def projection(width: int) -> nn.Module:
            return nn.Sequential(nn.Linear(width, dim * 2), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim * 2, dim))

        if modality == "id":
            self.table = nn.Embedding(n, dim)
            nn.init.normal_(self.table.weight, std=0.1)
        if modality in ("multimodal", "image"):
            self.image_proj = projection(image.shape[1])
        if modality in ("multimodal", "text"):
            self.text_proj = projection(text.shape[1])
        if modality == "multimodal":
            self.mix = nn.Linear(2 * dim, dim) if fusion == "gated" else projection(2 * dim)

    def parts(self, ids: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The image and text projections of ``ids`` (None for a modality the tower lacks)."""
        h_img = self.image_proj(self.image[ids]) if hasattr(self, "image_proj") else None
        h_txt = self.text_proj(self.text[ids]) if hasattr(self, "text_proj") else None
        return h_img, h_txt

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.modality == "id":
            return F.normalize(self.table(ids), dim=-1)
        h_img, h_txt = self.parts(ids)
        if self.modality == "image":
            fused = h_img
        elif self.modality == "text":
            fused = h_txt
        elif self.fusion == "gated":
            gate = torch.sigmoid(self.mix(torch.cat([h_img, h_txt], dim=-1)))
            fused = gate * h_img + (1 - gate) * h_txt
        else:
            fused = self.mix(torch.cat([h_img, h_txt], dim=-1))
        return F.normalize(fused, dim=-1)


class UserTower(nn.Module):
    """A causal transformer (or GRU) over the item vectors of the last L steps plus event-type and
    position embeddings; the state after every step, projected into the item space."""

    def __init__(self, dim: int, max_len: int, kind: str = "transformer", layers: int = 2, heads: int = 2,
                 dropout: float = 0.1):
        super().__init__()
        if kind not in ("transformer", "gru"):
            raise ConfigError(f"userrec.user_tower must be transformer or gru, got {kind!r}")
        self.kind, self.scale = kind, dim ** 0.5  # unit item vectors scaled to the embeddings' size
        self.event = nn.Embedding(4, dim, padding_idx=0)
        self.position = nn.Embedding(max_len, dim)
        for table in (self.event, self.position):  # small, so they shift the item vectors without drowning them
            nn.init.normal_(table.weight, std=0.1)
        self.norm = nn.LayerNorm(dim)
        if kind == "transformer":
            layer = nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout, batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        else:
            self.encoder = nn.GRU(dim, dim, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0)
        self.out = nn.Linear(dim, dim)

    def forward(self, item_vectors: torch.Tensor, events: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, L, D) item vectors, (B, L) event types, (B, L) bool → (B, L, D) normalised states."""
        length = item_vectors.shape[1]
        positions = torch.arange(length, device=item_vectors.device)
        x = self.norm(item_vectors * self.scale + self.event(events) + self.position(positions)[None])
        x = x * valid[..., None]
        if self.kind == "transformer":
            causal = nn.Transformer.generate_square_subsequent_mask(length, device=x.device, dtype=torch.bool)
            x = self.encoder(x, mask=causal, src_key_padding_mask=~valid, is_causal=True)
        else:
            x, _ = self.encoder(x)
        return F.normalize(self.out(x), dim=-1)


class UserModel(nn.Module):
    def __init__(self, items: ItemTower, users: UserTower):
        super().__init__()
        self.items, self.users = items, users

    def states(self, item_ids: torch.Tensor, events: torch.Tensor) -> torch.Tensor:
        """(B, L) right-padded ids (-1 = padding) → (B, L, D) user states."""
        valid = item_ids >= 0
        vectors = self.items(item_ids.clamp(min=0))
        return self.users(vectors, events, valid)

    def last_state(self, item_ids: torch.Tensor, events: torch.Tensor) -> torch.Tensor:
        """The state after each row's last real step: (B, D)."""
        states = self.states(item_ids, events)
        last = (item_ids >= 0).sum(dim=1).clamp(min=1) - 1
        return states[torch.arange(len(last)), last]


def mixed_loss(model: UserModel, batch: dict, weights: dict[str, float], temperature: float,
               n_items: int, sampled: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The weighted objective on one batch; returns every term and ``total``."""
    items, events, targets = batch["items"], batch["events"], batch["targets"]
    states = model.states(items, events)
    mask = targets >= 0
    queries, positive_ids = states[mask], targets[mask]
    negatives = torch.randint(0, n_items, (sampled,), generator=generator, device=items.device)
    candidate_ids = torch.cat([positive_ids, negatives])
    candidates = model.items(candidate_ids)
    same = positive_ids[:, None] == candidate_ids[None, :]
    terms = {"user_item": info_nce(queries, candidates, torch.arange(len(positive_ids), device=items.device),
                                   temperature, same)}
    if weights.get("item_item", 0) > 0 and len(batch["pairs"]):
        a, b = batch["pairs"][:, 0], batch["pairs"][:, 1]
        same_pair = (a[:, None] == a[None, :]) & (b[:, None] == b[None, :])
        terms["item_item"] = symmetric_info_nce(model.items(a), model.items(b), temperature, same_pair)
    if weights.get("image_text", 0) > 0 and model.items.modality == "multimodal":
        ids = torch.unique(candidate_ids)
        h_img, h_txt = model.items.parts(ids)
        terms["image_text"] = symmetric_info_nce(F.normalize(h_img, dim=-1), F.normalize(h_txt, dim=-1), temperature)
    terms["total"] = sum(weights.get(name, 0) * value for name, value in terms.items())
    return terms
