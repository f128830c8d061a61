"""The sigmoid contrastive loss of SigLIP, over the global batch.

Zhai, Mustafa, Kolesnikov, Beyer. "Sigmoid Loss for Language Image Pre-Training", ICCV 2023, eq. 1:

    L = -1/|B| * sum_i sum_j log sigmoid(z_ij * (t * x_i · y_j + b))

with z_ij = 1 for matching pairs and -1 otherwise, over the *global* batch B.

Data-parallel: every rank scores its local images against the texts of all ranks (all-gathered
with gradients, so each text embedding receives the gradient of every rank's terms) and divides
by its local batch size. The mean of the ranks' losses is then L, and DDP's averaging of the
gradients yields exactly the single-process gradient of L on the same global batch
(``tests/train/test_distributed.py`` checks both).

Marketplace false negatives: two listings in a batch can share a photo (same ``image_sha256``)
or the same normalised title; pushing those apart would teach the model to separate identical
things, so such pairs are labelled positive (z_ij = 1). Their group ids are gathered with the texts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lookalike.train.distributed import all_gather_no_grad, all_gather_with_grad


class SigmoidLoss(torch.nn.Module):
    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor, positives: torch.Tensor | None = None) -> torch.Tensor:
        """image_embeds (B, D), text_embeds (C, D) L2-normalised; positives (B, C) bool, default the diagonal."""
        logits = image_embeds @ text_embeds.t() * logit_scale.exp() + logit_bias  # (B, C)
        if positives is None:
            positives = torch.eye(*logits.shape, dtype=torch.bool, device=logits.device)
        z = positives.to(logits.dtype) * 2 - 1
        return -F.logsigmoid(z * logits).sum() / len(logits)


def positive_mask(group_ids: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) integer group ids (equal ids = same image or same normalised text) vs (C,) → (B, C) bool."""
    other = group_ids if other is None else other
    return group_ids[:, None] == other[None, :]


def global_sigmoid_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                        logit_bias: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """This rank's share of the global-batch loss (see the module docstring); a world of one is plain eq. 1."""
    all_text = all_gather_with_grad(text_embeds)
    all_groups = all_gather_no_grad(groups)
    return SigmoidLoss()(image_embeds, all_text, logit_scale, logit_bias, positive_mask(groups, all_groups))
