import numpy as np
import pytest
import torch

from lookalike.errors import ConfigError
from lookalike.siglip import Preprocess, build_config, init_siglip_head, train_tokenizer
from lookalike.train.data import PairStream, StreamPlan, batch_loader, fragments, group_ids, read_texts
from lookalike.config import TrainConfig
from lookalike.train.loop import (Budget, Checkpoints, EarlyStopping, cosine_lr, micro_batch, param_groups,
                                  train_siglip)


def test_warmup_then_cosine_to_zero():
    assert cosine_lr(0, base=1.0, warmup=10, progress=0.0) == 0.1
    assert cosine_lr(9, base=1.0, warmup=10, progress=0.0) == 1.0
    assert abs(cosine_lr(50, base=1.0, warmup=10, progress=0.5) - 0.5) < 1e-9
    assert cosine_lr(99, base=1.0, warmup=10, progress=1.0) == 0.0


def test_weight_decay_spares_norms_biases_and_embeddings():
    from transformers import SiglipModel

    model = SiglipModel(build_config("tiny", vocab_size=50, max_text_length=8))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim >= 2 for p in decay["params"])
    assert not any("norm" in names[id(p)] or names[id(p)].endswith("bias") for p in decay["params"])
    assert any("embedding" in names[id(p)] for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0


def _setup(snapshot, workers=0):
    """A fresh tiny model and a real batch stream over the colour snapshot (same seed every call)."""
    from transformers import SiglipModel

    texts = read_texts(snapshot, "{title}")
    tok = train_tokenizer(texts.texts, 60, 8)
    frags = fragments(snapshot)
    groups = group_ids(texts.shas, texts.texts)
    plan = StreamPlan(frags, np.ones(len(texts.texts), bool), seed=0)
    torch.manual_seed(0)
    model = SiglipModel(build_config("tiny", vocab_size=len(tok), max_text_length=8))
    init_siglip_head(model)

    def batches(start, micro=32):
        return batch_loader(PairStream(frags, texts.texts, groups, plan, batch_size=micro, preprocess=Preprocess(32),
                                       tokenizer=tok, max_text_length=8, start=start), workers, pin_memory=False)

    return model, batches


def _cfg(**kw) -> tuple[TrainConfig, Budget]:
    """A small run's TrainConfig (no augmentation, no checkpoints unless asked) and its step budget."""
    base = dict(max_steps=200, minutes=30, batch_size=32, learning_rate=3e-3, weight_decay=0.01, warmup_steps=10,
                seed=0, precision="fp32", colour_augment=0.0, crop_scale=1.0, patch_dropout=0.0, checkpoint_every=0)
    budget = {key: kw.pop(key) for key in ("validate_every", "progress_every") if key in kw}
    cfg = TrainConfig(**{**base, **kw})
    return cfg, Budget(cfg.max_steps, **budget)


def test_training_reports_progress_and_learns(colour_snapshot):
    model, batches = _setup(colour_snapshot, workers=1)
    messages = []
    stats = train_siglip(model, batches, Preprocess(32), *_cfg(), progress=messages.append)
    assert [m.split()[2] for m in messages] == ["100/200", "200/200"]
    assert "pairs/s" in messages[0] and "left" in messages[0]
    first, last = (float(m.split("loss ")[1].split()[0]) for m in messages)
    assert stats["steps"] == 200 and last < first


class Crash(Exception):
    pass


def test_an_interrupted_run_resumes_to_the_same_parameters(colour_snapshot, tmp_path):
    cfg = _cfg(max_steps=60, checkpoint_every=10, progress_every=5, grad_accum=2)
    reference, batches = _setup(colour_snapshot, workers=1)
    train_siglip(reference, batches, Preprocess(32), *cfg, fingerprint="v1")

    def crash_at_25(message):
        if "step 25/" in message:
            raise Crash()

    ckpt = Checkpoints(tmp_path / "ckpt")
    first, batches = _setup(colour_snapshot, workers=1)
    with pytest.raises(Crash):
        train_siglip(first, batches, Preprocess(32), *cfg, checkpoints=ckpt, progress=crash_at_25, fingerprint="v1")
    assert [p.name for p in sorted(ckpt.folder.iterdir())] == ["step-0000010.pt", "step-0000020.pt"]

    resumed, batches = _setup(colour_snapshot, workers=1)  # a new process would start from scratch like this
    messages = []
    stats = train_siglip(resumed, batches, Preprocess(32), *cfg, checkpoints=ckpt, progress=messages.append,
                         fingerprint="v1")
    assert stats["resumed_from"] == "step-0000020.pt" and "resuming from step-0000020.pt" in messages[0]
    ref = dict(reference.named_parameters())
    for name, p in resumed.named_parameters():
        torch.testing.assert_close(p, ref[name], rtol=1e-5, atol=1e-6, msg=name)
    # and the run did move away from where the crash left it
    assert not torch.allclose(dict(first.named_parameters())["logit_bias"], ref["logit_bias"])

    other = _setup(colour_snapshot)[0]
    stats = train_siglip(other, batches, Preprocess(32), *cfg, checkpoints=ckpt, fingerprint="another-config")
    assert stats["resumed_from"] is None  # a checkpoint of another recipe is never resumed


def test_frozen_text_tower_and_lower_vision_blocks_do_not_move(colour_snapshot):
    from transformers import SiglipModel

    from lookalike.siglip import build_config as bc
    from lookalike.siglip import ARCHITECTURES

    ARCHITECTURES["tiny2"] = {**ARCHITECTURES["tiny"], "layers": 2}
    try:
        texts = read_texts(colour_snapshot, "{title}")
        tok = train_tokenizer(texts.texts, 60, 8)
        model = SiglipModel(bc("tiny2", vocab_size=len(tok), max_text_length=8))
    finally:
        del ARCHITECTURES["tiny2"]
    _, batches = _setup(colour_snapshot)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_siglip(model, batches, Preprocess(32),
                 *_cfg(max_steps=5, freeze_text=True, freeze_vision_layers=1, gradient_checkpointing=True))
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert not any(n.startswith("text_model.") for n in moved)
    assert not any(n.startswith(("vision_model.embeddings.", "vision_model.encoder.layers.0.")) for n in moved)
    assert any(n.startswith("vision_model.encoder.layers.1.") for n in moved)
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again for whoever uses the model next


def test_global_batch_must_divide_into_ranks_and_micro_steps():
    with pytest.raises(ConfigError, match="multiple of world size"):
        micro_batch(_cfg(batch_size=30, grad_accum=4)[0], 2)
    assert micro_batch(_cfg(batch_size=32, grad_accum=2)[0], 2) == 8


def test_early_stopping_stops_on_a_flat_curve_and_keeps_the_best_weights(colour_snapshot):
    """The loop checks held-out recall every 10 steps; scores given here rise, then stall: after
    ``patience`` checks without a gain it stops, and the model ends with the weights of the best check."""
    model, batches = _setup(colour_snapshot)
    scores = iter([0.10, 0.30, 0.29, 0.30, 0.25, 0.20, 0.90])
    seen = {}

    def validate():
        step = 10 * (len(seen) + 1)
        seen[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        value = next(scores)
        return {"recall@1": value / 2, "recall@5": value}

    early = EarlyStopping(validate, every=10, patience=3)
    stats = train_siglip(model, batches, Preprocess(32), *_cfg(validate_every=10), early=early)
    assert stats["stopped"] == "patience" and stats["steps"] == 50  # checks at 20 (best), then 30, 40, 50 flat
    assert [c["step"] for c in stats["curve"]] == [10, 20, 30, 40, 50] and stats["best_step"] == 20
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, seen[20][name], msg=name)


def test_random_resized_crops_cut_each_photo_differently_and_keep_its_size():
    from lookalike.train.loop import augment, resized_crop, step_generator

    # A photo whose top half is black and bottom half white: a crop's mean tells where it was cut.
    photo = torch.zeros(1, 32, 32, 3, dtype=torch.uint8)
    photo[:, 16:] = 255
    batch = photo.repeat(64, 1, 1, 1)
    crops = resized_crop(batch, step_generator(0, 1), 0.3)
    assert crops.shape == batch.shape and crops.dtype == torch.uint8
    means = crops.float().mean(dim=(1, 2, 3))
    assert means.std() > 20  # every photo gets its own crop
    assert means.min() < 127 < means.max()
    same = resized_crop(batch, step_generator(0, 1), 0.3)
    assert torch.equal(crops, same)  # a function of the step, like the other augmentations
    whole = resized_crop(batch, step_generator(0, 1), 1.0 - 1e-6)  # scale ≈ 1 keeps ≈ the whole photo
    assert (whole.float().mean(dim=(1, 2, 3)) - 127.5).abs().max() < 25
    shifted = augment(batch, step_generator(0, 2), crop_scale=1.0)  # crop_scale 1: one shift for the batch
    assert shifted.float().mean(dim=(1, 2, 3)).std() < 1e-3


def test_patch_dropout_trains_on_fewer_tokens_and_serves_on_all(colour_snapshot):
    from lookalike.train.loop import PatchDropout, step_generator

    model, batches = _setup(colour_snapshot)
    seen = []
    probe = model.vision_model.encoder.register_forward_pre_hook(lambda m, args, kw: seen.append(kw.get(
        "inputs_embeds", args[0] if args else None).shape[1]), with_kwargs=True)
    pixels = torch.randn(4, 3, 32, 32)
    dropout = PatchDropout(model, 0.5)
    dropout.gen = step_generator(0, 0)
    model.train()
    model.get_image_features(pixel_values=pixels)
    model.eval()
    with torch.no_grad():
        model.get_image_features(pixel_values=pixels)
    dropout.remove()
    probe.remove()
    assert seen == [8, 16]  # 16 patches of 8 px in a 32 px photo; half kept while training

    stats = train_siglip(model, batches, Preprocess(32), *_cfg(max_steps=30, patch_dropout=0.5))
    assert stats["steps"] == 30 and np.isfinite(stats["final_loss"])
    assert not model.vision_model.embeddings._forward_hooks  # the hook goes when training ends


def test_image_positive_term_adds_a_second_view_to_the_loss(colour_snapshot):
    plain, batches = _setup(colour_snapshot)
    base = train_siglip(plain, batches, Preprocess(32), *_cfg(max_steps=3, learning_rate=0.0))
    both, batches = _setup(colour_snapshot)
    with_views = train_siglip(both, batches, Preprocess(32), *_cfg(max_steps=3, learning_rate=0.0, image_positive=1.0,
                                                                  crop_scale=0.5))
    assert with_views["final_loss"] > base["final_loss"] + 0.1  # the image–image term is counted
    trained, batches = _setup(colour_snapshot)
    stats = train_siglip(trained, batches, Preprocess(32), *_cfg(max_steps=60, image_positive=0.5, crop_scale=0.5))
    assert np.isfinite(stats["final_loss"]) and stats["final_loss"] < with_views["final_loss"]


def test_recipe_shares_out_of_range_are_config_errors():
    from lookalike.config import load_config

    for key, value in (("CROP_SCALE", "0"), ("PATCH_DROPOUT", "1"), ("COLOUR_AUGMENT", "1.5"), ("IMAGE_POSITIVE", "-1")):
        with pytest.raises(ConfigError, match=f"train.{key.lower()}"):
            load_config(environ={f"LOOKALIKE_TRAIN__{key}": value})
    assert load_config(environ={"LOOKALIKE_TRAIN__CROP_SCALE": "0.4"}).train.crop_scale == 0.4
