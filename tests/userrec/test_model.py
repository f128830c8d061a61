"""The user model's loss terms against hand computations, and its towers' contracts."""
import math

import pytest
import torch

from lookalike.userrec.model import ItemTower, UserModel, UserTower, info_nce, mixed_loss, symmetric_info_nce


def test_info_nce_is_the_cross_entropy_of_scaled_cosines():
    # q = (1, 0); candidates (1, 0) [the positive] and (0, 1); τ = 0.5: logits 2 and 0.
    q, c = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = info_nce(q, c, torch.tensor([0]), temperature=0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)


def test_a_copy_of_the_positive_is_masked_and_not_counted_as_a_negative():
    q = torch.tensor([[1.0, 0.0]])
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # column 2 is the positive item again
    unmasked = info_nce(q, c, torch.tensor([0]), 0.5)
    assert unmasked.item() == pytest.approx(-math.log(math.exp(2) / (2 * math.exp(2) + 1)), abs=1e-6)
    same = torch.tensor([[True, False, True]])
    assert info_nce(q, c, torch.tensor([0]), 0.5, same).item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)


def test_the_symmetric_form_averages_both_directions():
    # a_0 = b_0 = (1, 0); a_1 = (0, 1), b_1 = (0.6, 0.8); τ = 1.
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    a_to_b = (-math.log(math.exp(1) / (math.exp(1) + math.exp(0.6)))
              - math.log(math.exp(0.8) / (math.exp(0) + math.exp(0.8)))) / 2
    b_to_a = (-math.log(math.exp(1) / (math.exp(1) + math.exp(0)))
              - math.log(math.exp(0.8) / (math.exp(0.6) + math.exp(0.8)))) / 2
    assert symmetric_info_nce(a, b, 1.0).item() == pytest.approx((a_to_b + b_to_a) / 2, abs=1e-6)


def _model(modality="multimodal", fusion="gated", kind="transformer", n=30, dim=8, max_len=5):
    torch.manual_seed(0)
    image, text = torch.nn.functional.normalize(torch.randn(n, 12), dim=-1), torch.nn.functional.normalize(torch.randn(n, 6), dim=-1)
    return UserModel(ItemTower(image, text, dim, modality, fusion, 0.0), UserTower(dim, max_len, kind, 1, 2, 0.0)).eval()


@pytest.mark.parametrize("kind", ["transformer", "gru"])
def test_the_user_state_at_a_step_never_sees_later_steps(kind):
    model = _model(kind=kind)
    items = torch.tensor([[3, 7, 9, 2, -1]])
    events = torch.tensor([[1, 2, 1, 3, 0]])
    changed = items.clone()
    changed[0, 3] = 11
    a, b = model.states(items, events), model.states(changed, events)
    assert torch.allclose(a[0, :3], b[0, :3], atol=1e-6)
    assert not torch.allclose(a[0, 3], b[0, 3])
    assert torch.allclose(model.last_state(items, events)[0], a[0, 3])
    assert torch.allclose(a.norm(dim=-1), torch.ones(1, 5), atol=1e-5)


@pytest.mark.parametrize("modality,fusion", [("multimodal", "gated"), ("multimodal", "concat"), ("text", "gated"),
                                             ("image", "gated"), ("id", "gated")])
def test_every_item_tower_gives_unit_vectors_and_reads_only_its_modalities(modality, fusion):
    model = _model(modality, fusion)
    vectors = model.items(torch.arange(30))
    assert vectors.shape == (30, 8) and torch.allclose(vectors.norm(dim=-1), torch.ones(30), atol=1e-5)
    if modality == "text":  # the image features cannot change a text-only item
        model.items.image.mul_(-1)
        assert torch.allclose(model.items(torch.arange(30)), vectors)


def test_the_mixed_objective_is_the_weighted_sum_of_its_terms():
    model = _model().train()
    batch = {"items": torch.tensor([[1, 2, 3, -1], [4, 5, -1, -1]]), "events": torch.tensor([[1, 1, 2, 0], [1, 3, 0, 0]]),
             "targets": torch.tensor([[2, 3, 6, -1], [5, 8, -1, -1]]), "pairs": torch.tensor([[1, 2], [4, 5], [2, 3]])}
    weights = {"user_item": 1.0, "item_item": 0.5, "image_text": 0.25}
    terms = mixed_loss(model, batch, weights, 0.5, n_items=30, sampled=10, generator=torch.Generator().manual_seed(0))
    assert set(terms) == {"user_item", "item_item", "image_text", "total"}
    expected = sum(weights[name] * terms[name] for name in weights)
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    terms["total"].backward()
    assert all(p.grad is not None for p in model.items.image_proj.parameters())
    text_only = mixed_loss(_model("text"), batch, weights, 0.5, 30, 10)
    assert "image_text" not in text_only
