from pipelines.train.loop import cosine_lr, param_groups


def test_warmup_then_cosine_to_zero():
    assert cosine_lr(0, base=1.0, warmup=10, progress=0.0) == 0.1
    assert cosine_lr(9, base=1.0, warmup=10, progress=0.0) == 1.0
    assert abs(cosine_lr(50, base=1.0, warmup=10, progress=0.5) - 0.5) < 1e-9
    assert cosine_lr(99, base=1.0, warmup=10, progress=1.0) == 0.0


def test_weight_decay_spares_norms_biases_and_embeddings():
    from transformers import SiglipModel

    from pipelines.siglip import build_config

    model = SiglipModel(build_config("tiny", vocab_size=50, max_text_length=8))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim >= 2 for p in decay["params"])
    assert not any("norm" in names[id(p)] or names[id(p)].endswith("bias") for p in decay["params"])
    assert any("embedding" in names[id(p)] for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
