"""A model on S3 (moto's real S3 server on loopback) is fetched once and embeds like the local copy."""
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from lookalike.config import load_config
from lookalike.embed.stage import run_embed
from lookalike.extract.stage import run_extract
from lookalike.objectstore import MANIFEST, local_model_dir, upload_dir
from lookalike.siglip import Preprocess, build_config, save_model, train_tokenizer
from tests.conftest import DS, write_config


def test_embed_with_a_model_on_s3(s3, tmp_path, sample_dir, monkeypatch):
    from transformers import SiglipModel

    tok = train_tokenizer(["red tee", "blue vase"] * 10, 30, 16)
    torch.manual_seed(0)
    local = tmp_path / "model"
    save_model(SiglipModel(build_config("tiny", vocab_size=len(tok), max_text_length=16)), tok, Preprocess(32), local,
               {"version": "s3-v1"})
    upload_dir(local, "s3://models/siglip/s3-v1")
    cached = local_model_dir("s3://models/siglip/s3-v1")
    assert sorted(p.name for p in cached.iterdir()) == sorted([MANIFEST, *(p.name for p in local.iterdir())])
    assert local_model_dir("s3://models/siglip/s3-v1") == cached  # fetched once

    cfg = load_config(write_config(tmp_path, sample_dir), environ={})
    monkeypatch.delenv("LOOKALIKE_CACHE_DIR")
    monkeypatch.setenv("LOOKALIKE_CACHE_DIR", str(tmp_path / "cache2"))  # a fresh host
    run_extract(cfg, DS)
    remote = run_embed(cfg, DS, model_uri="s3://models/siglip/s3-v1")
    a = pq.read_table(remote["item_embeddings"]).sort_by("item_id")
    local_out = run_embed(cfg, DS, model_uri=str(local))
    b = pq.read_table(local_out["item_embeddings"]).sort_by("item_id")
    assert remote["model_version"] == "s3-v1" and a.num_rows == b.num_rows > 100
    assert np.allclose(np.array(a.column("embedding").to_pylist()), np.array(b.column("embedding").to_pylist()))


def test_a_prefix_without_a_model_is_a_clear_error(s3):
    from lookalike.errors import LookalikeError

    with pytest.raises(LookalikeError, match="no Hugging Face model folder"):
        local_model_dir("s3://models/nothing-here")
