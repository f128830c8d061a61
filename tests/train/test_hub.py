"""model.init as a Hugging Face model name: resolved through the Hugging Face cache, so it works with
the hub unreachable once the cache holds it (the test fills a cache from a checkpoint it saves itself,
in the hub's cache layout; nothing here uses the network). SigLIP 2: the fixed-resolution checkpoints'
Gemma tokenizer lowercases, NaFlex checkpoints are refused with a clear message."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lookalike.errors import ConfigError
from lookalike.siglip import embed_images, load_model
from tests.conftest import DS, tiny_model, write_config

REPO = Path(__file__).resolve().parents[2]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _fill_cache(home: Path, name: str, folder: Path) -> Path:
    """``folder`` as the cached snapshot of hub model ``name`` under ``home`` (HF_HOME)."""
    repo = home / "hub" / f"models--{name.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


def test_a_hub_model_name_trains_from_the_cache_with_the_hub_offline_and_embeds(tmp_path, sample_dir):
    parent = Path(tiny_model(tmp_path / "parent", seed=3, version="acme-tiny"))
    _fill_cache(tmp_path / "hf", "acme/siglip-tiny", parent)
    config = write_config(tmp_path, sample_dir, model={"init": "acme/siglip-tiny"},
                          train={"max_steps": 3, "batch_size": 16, "learning_rate": 1e-4, "checkpoint_every": 0})
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("LOOKALIKE_", "HF_"))},
           "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    for stage in ("extract", "train"):
        done = subprocess.run([sys.executable, "-m", "lookalike.tools.cli", stage, "--config", str(config),
                               "--ds", DS], env=env, capture_output=True, text=True, cwd=REPO, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
    models = tmp_path / "models" / "siglip"
    trained = next(p for p in models.iterdir() if (p / "lookalike.json").exists())
    meta = json.loads((trained / "lookalike.json").read_text())
    assert meta["architecture"] == "checkpoint:acme/siglip-tiny" and meta["metrics"]["steps"] == 3
    loaded = load_model(trained)
    photos = [p.read_bytes() for p in sorted((sample_dir / "images").rglob("*.jpg"))[:4]]
    vectors = embed_images(loaded, photos)
    assert vectors.shape[0] == 4 and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_a_hub_model_missing_from_the_cache_with_the_hub_offline_is_a_clear_error(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from lookalike.train.stage import hub_checkpoint

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="not in the Hugging Face cache.*hf download acme/absent"):
        hub_checkpoint("acme/absent")


def test_a_siglip2_naflex_checkpoint_is_refused_by_name(tmp_path):
    from lookalike.train.stage import check_checkpoint

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip2"}))
    with pytest.raises(ConfigError, match="NaFlex.*fixed-resolution"):
        check_checkpoint(tmp_path, "google/siglip2-base-patch16-naflex")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(ConfigError, match="not SigLIP"):
        check_checkpoint(tmp_path, "openai/clip")


def test_a_siglip2_gemma_tokenizer_lowercases_what_it_reads_and_keeps_doing_so(tmp_path):
    """SigLIP 2's fixed-resolution checkpoints ship a Gemma tokenizer that expects lowercased text."""
    from transformers import AutoTokenizer, GemmaTokenizer

    from lookalike.siglip import lowercase_if_expected

    from tokenizers import normalizers

    parent = Path(tiny_model(tmp_path / "parent", seed=1, version="p"))
    backend = AutoTokenizer.from_pretrained(parent).backend_tokenizer
    backend.normalizer = normalizers.NFKC()  # cased, as Gemma's is
    gemma = GemmaTokenizer(tokenizer_object=backend)
    assert gemma("Red TEE")["input_ids"] != gemma("red tee")["input_ids"]
    gemma = lowercase_if_expected(gemma)
    assert gemma("Red TEE")["input_ids"] == gemma("red tee")["input_ids"]
    gemma.save_pretrained(tmp_path / "saved")
    again = lowercase_if_expected(AutoTokenizer.from_pretrained(tmp_path / "saved"))
    assert type(again).__name__.startswith("Gemma") and again("BLUE Vase")["input_ids"] == again("blue vase")["input_ids"]
    assert repr(again.backend_tokenizer.normalizer).count("Lowercase") == 1  # once, however often it is loaded
