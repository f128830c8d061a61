import io

import torch
from PIL import Image

from lookalike.siglip import Preprocess
from lookalike.train.data import group_ids
from lookalike.train.loop import augment, recolour


def test_recolour_permutes_channels_or_greys_each_photo():
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (64, 8, 8, 3), dtype=torch.uint8, generator=g)
    out = recolour(pixels, torch.Generator().manual_seed(1), share=1.0)
    grey = (out[..., 0] == out[..., 1]).all(dim=(1, 2)) & (out[..., 1] == out[..., 2]).all(dim=(1, 2))
    permuted = torch.stack([(out[i].sort(dim=-1).values == pixels[i].sort(dim=-1).values).all() for i in range(64)])
    assert bool((grey | permuted).all()) and 10 < int(grey.sum()) < 54  # about half each
    assert torch.equal(recolour(pixels, torch.Generator().manual_seed(1), share=0.0), pixels)
    same = augment(pixels, torch.Generator().manual_seed(2), 0.5)
    assert torch.equal(same, augment(pixels, torch.Generator().manual_seed(2), 0.5))  # seeded


def test_keep_aspect_pads_with_the_background_instead_of_stretching():
    img = Image.new("RGB", (60, 80), (255, 255, 255))
    img.paste(Image.new("RGB", (20, 80), (200, 0, 0)), (20, 0))  # a red bar, full height, middle third
    buf = io.BytesIO()
    img.save(buf, "PNG")
    padded = Preprocess(64, pad=True).decode([buf.getvalue()])[0]
    stretched = Preprocess(64).decode([buf.getvalue()])[0]
    red_cols = lambda a: int(((a[:, :, 0] > 150) & (a[:, :, 1] < 80)).any(axis=0).sum())  # noqa: E731
    assert abs(red_cols(padded) - 16) <= 1 and abs(red_cols(stretched) - 21) <= 1  # 20 * 64/80 vs 20 * 64/60
    assert (padded[:, :4] == 255).all() and (padded[:, -4:] == 255).all()  # the padding is the background
    assert Preprocess.from_hf(Preprocess(64, pad=True).to_hf()).pad  # travels with the model folder


def test_text_positives_can_be_switched_off():
    shas, texts = ["a", "b", "a"], ["red tee", "red tee", "x"]
    assert len(set(group_ids(shas, texts))) == 1
    assert len(set(group_ids(shas, None))) == 2
