"""The sigmoid contrastive loss of SigLIP.

Zhai, Mustafa, Kolesnikov, Beyer. "Sigmoid Loss for Language Image Pre-Training", ICCV 2023, eq. 1:

    L = -1/|B| * sum_i sum_j log sigmoid(z_ij * (t * x_i · y_j + b))

with z_ij = 1 for matching pairs and -1 otherwise. On a marketplace two listings in a batch can
share a photo (same ``image_sha256``) or the same normalised title; pushing those apart would
teach the model to separate identical things, so such pairs are labelled positive (z_ij = 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class SigmoidLoss(torch.nn.Module):
    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor, positives: torch.Tensor | None = None) -> torch.Tensor:
        """image_embeds, text_embeds: (B, D) L2-normalised; positives: (B, B) bool, default the diagonal."""
        logits = image_embeds @ text_embeds.t() * logit_scale.exp() + logit_bias  # (B, B)
        if positives is None:
            positives = torch.eye(len(logits), dtype=torch.bool, device=logits.device)
        z = positives.to(logits.dtype) * 2 - 1
        return -F.logsigmoid(z * logits).sum() / len(logits)


def positive_mask(group_ids: torch.Tensor) -> torch.Tensor:
    """(B,) integer group ids (equal ids = same image or same normalised text) → (B, B) bool."""
    return group_ids[:, None] == group_ids[None, :]
