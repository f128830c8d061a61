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


def test_training_reports_progress_and_learns(sample_dir, tmp_path):
    """A full small loop (tiny model, 200 steps): progress lines arrive and the loss falls."""
    import numpy as np
    import torch
    from transformers import SiglipModel

    from pipelines.siglip import Preprocess, build_config, init_siglip_head, train_tokenizer
    from pipelines.train.data import Pairs
    from pipelines.train.loop import LoopConfig, train_siglip

    rng = np.random.default_rng(0)
    colours = rng.integers(0, 4, 256)
    palette = np.array([[220, 30, 30], [30, 30, 220], [30, 200, 30], [230, 230, 40]], dtype=np.uint8)
    pixels = np.broadcast_to(palette[colours][:, None, None, :], (256, 32, 32, 3)).copy()
    texts = [["red", "blue", "green", "yellow"][c] + f" item {i}" for i, c in enumerate(colours)]
    tok = train_tokenizer(texts, 80, 8)
    torch.manual_seed(0)
    model = SiglipModel(build_config("tiny", vocab_size=len(tok), max_text_length=8))
    init_siglip_head(model)
    messages = []
    stats = train_siglip(model, tok, Preprocess(32), Pairs([str(i) for i in range(256)], pixels, texts,
                                                            np.arange(256)), 8,
                         LoopConfig(max_steps=200, minutes=5, batch_size=32, learning_rate=3e-3, weight_decay=0.0,
                                    warmup_steps=10, seed=0, bf16=False), progress=messages.append)
    assert [m.split()[2] for m in messages] == ["100/200", "200/200"]
    assert "pairs/s" in messages[0] and "left" in messages[0]
    first, last = (float(m.split("loss ")[1].split()[0]) for m in messages)
    assert stats["steps"] == 200 and last < first
