import math

import torch

from lookalike.train.data import group_ids
from lookalike.train.loss import SigmoidLoss, positive_mask


def test_sigmoid_loss_matches_a_hand_computed_case():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    t, b = torch.tensor(math.log(10.0)), torch.tensor(-10.0)
    # logits = 10 * cos - 10: [[0, -4], [-10, -2]]; positives on the diagonal
    expected = -(math.log(1 / (1 + math.exp(-0.0))) + math.log(1 / (1 + math.exp(-4.0)))
                 + math.log(1 / (1 + math.exp(-10.0))) + math.log(1 / (1 + math.exp(2.0)))) / 2
    assert abs(SigmoidLoss()(img, txt, t, b).item() - expected) < 1e-6


def test_shared_photos_and_titles_are_not_pushed_apart():
    groups = torch.from_numpy(group_ids(["a", "b", "a", "c"], ["red tee", "Red  tee!", "x", "y"]))
    mask = positive_mask(groups)
    assert mask[0, 2] and mask[0, 1] and mask[1, 2]  # same sha (0,2), same normalised title (0,1)
    assert not mask[0, 3]
    # Moving text 2 towards image 0 (same photo) lowers the masked loss; the plain loss would
    # push them apart instead.
    only_sha = positive_mask(torch.from_numpy(group_ids(["a", "b", "a", "c"], ["p", "q", "r", "s"])))
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    moved = txt.clone()
    moved[2] = torch.nn.functional.normalize(txt[2] + 0.5 * img[0], dim=-1)
    t, b = torch.tensor(2.0), torch.tensor(-1.0)
    loss = SigmoidLoss()
    assert loss(img, moved, t, b, only_sha) < loss(img, txt, t, b, only_sha)
    assert loss(img, moved, t, b) > loss(img, txt, t, b)
