import hashlib
import json

import numpy as np
import pytest

from lookalike import registry
from lookalike.config import load_config
from lookalike.errors import ConfigError
from lookalike.extract.stage import run_extract
from lookalike.siglip import embed_images, embed_texts, load_model
from lookalike.storage import ModelStore
from tests.conftest import DS, write_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sample_dir):
    root = tmp_path_factory.mktemp("train")
    cfg = load_config(write_config(root, sample_dir), environ={})
    run_extract(cfg, DS)
    from lookalike.train.stage import run_train

    return cfg, run_train(cfg, DS, progress=lambda *_: None)


def test_writes_a_complete_hugging_face_model_directory(trained):
    cfg, out = trained
    path = ModelStore.at(cfg.models).version_dir(out["model_version"])
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json", "lookalike.json"} <= names
    meta = json.loads((path / "lookalike.json").read_text())
    assert meta["snapshot"]["ds"] == DS and meta["snapshot"]["pairs"] > 100
    assert set(meta["metrics"]["val"]) == {"recall@1", "recall@5"}
    assert meta["config"]["model"]["init"] == "tiny"  # the resolved config travels with the model
    loaded = load_model(path)
    assert loaded.model.logit_bias.item() != 0.0  # trained from the paper's -10 start, not transformers' 0


def test_rerun_reuses_the_model_trained_on_the_same_snapshot(trained):
    cfg, out = trained
    from lookalike.train.stage import run_train

    messages = []
    again = run_train(cfg, DS, progress=messages.append)
    assert again == out and "reusing" in messages[0]
    assert [v["version"] for v in registry.list_versions(ModelStore.at(cfg.models))] == [out["model_version"]]


def test_loaded_model_embeds_unit_vectors_and_japanese_text(trained):
    cfg, out = trained
    loaded = load_model(out["model_uri"])
    import pyarrow.parquet as pq

    from lookalike.storage import Warehouse

    images = pq.read_table(Warehouse.of(cfg).work(DS, "catalog"), columns=["image"]).column("image")
    vecs = embed_images(loaded, images.to_pylist()[:10])
    assert vecs.shape == (10, 32) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    titles = pq.read_table(Warehouse.of(cfg).work(DS, "listings_snapshot"), columns=["title"]).column(0)
    japanese = next(t for t in titles.to_pylist() if any("\u3040" <= ch <= "\u9fff" for ch in t))
    ids = loaded.tokenizer(japanese)["input_ids"]
    assert loaded.tokenizer.unk_token_id not in ids  # the offline tokenizer covers CJK titles
    assert loaded.tokenizer.decode(ids, skip_special_tokens=True) == japanese.lower()
    txt = embed_texts(loaded, ["赤 Tシャツ 美品", ""])
    assert txt.shape == (2, 32) and np.isfinite(txt).all()


def test_fine_tunes_from_a_saved_checkpoint(trained, tmp_path, sample_dir):
    cfg, out = trained
    child_cfg = load_config(write_config(tmp_path, sample_dir, model={"init": out["model_uri"]},
                                         train={"max_steps": 5, "batch_size": 16, "learning_rate": 1e-4,
                                                "max_text_length": 40}),  # the checkpoint decides
                            environ={})
    run_extract(child_cfg, DS)
    from lookalike.train.stage import run_train

    child = run_train(child_cfg, DS, progress=lambda *_: None)
    parent_tok = load_model(out["model_uri"]).tokenizer
    child_model = load_model(child["model_uri"])
    assert child_model.tokenizer.get_vocab() == parent_tok.get_vocab()  # the checkpoint brings its tokenizer
    assert child_model.max_text_length == 24  # and its text length (train.max_text_length=40 is ignored)
    meta = json.loads((child_model.path / "lookalike.json").read_text())
    assert meta["architecture"] == f"checkpoint:{out['model_uri']}"


def test_unknown_init_is_a_clear_error(tmp_path, sample_dir):
    cfg = load_config(write_config(tmp_path, sample_dir, model={"init": "resnet9000"}), environ={})
    run_extract(cfg, DS)
    from lookalike.train.stage import run_train

    with pytest.raises(ConfigError, match="neither a named architecture"):
        run_train(cfg, DS)


def test_fine_tunes_from_a_checkpoint_on_s3(trained, tmp_path, sample_dir, s3):
    """model.init = s3://…: downloaded once into the cache, checked, and fine-tuned like a local one."""
    from lookalike.objectstore import MANIFEST, local_model_dir, upload_dir

    cfg, out = trained
    upload_dir(out["model_uri"], "s3://models/siglip/parent")
    child_cfg = load_config(write_config(tmp_path, sample_dir, model={"init": "s3://models/siglip/parent"},
                                         train={"max_steps": 3, "batch_size": 16, "learning_rate": 1e-4}),
                            environ={})
    run_extract(child_cfg, DS)
    from lookalike.train.stage import run_train

    child = run_train(child_cfg, DS, progress=lambda *_: None)
    meta = json.loads((ModelStore.at(child_cfg.models).version_dir(child["model_version"]) / "lookalike.json")
                      .read_text())
    assert meta["architecture"] == "checkpoint:s3://models/siglip/parent"
    assert meta["parent"] == out["model_version"]  # lineage comes from the checkpoint's own record
    assert registry.version_info(ModelStore.at(child_cfg.models), child["model_version"])["parent"] \
        == out["model_version"]

    cached = local_model_dir("s3://models/siglip/parent")
    record = json.loads((cached / MANIFEST).read_text())["files"]
    assert record["model.safetensors"]["sha256"] == hashlib.sha256(
        (ModelStore.at(cfg.models).version_dir(out["model_version"]) / "model.safetensors").read_bytes()).hexdigest()
    (cached / "model.safetensors").write_bytes(b"truncated")  # a damaged cache is fetched again
    assert (local_model_dir("s3://models/siglip/parent") / "model.safetensors").stat().st_size \
        == record["model.safetensors"]["size"]


@pytest.mark.slow
def test_the_real_siglip_base_shape_trains_saves_and_fine_tunes(tmp_path, sample_dir):
    """siglip-base-patch16-224 (~200M parameters) from scratch for 2 steps, saved in Hugging Face
    format, then fine-tuned from that folder for 2 more: the path a real checkpoint takes."""
    base = load_config(write_config(_mkdir(tmp_path / "a"), sample_dir, model={"init": "siglip-base-patch16-224"},
                                    train={"max_steps": 2, "batch_size": 4, "val_max_items": 4, "warmup_steps": 1,
                                           "checkpoint_every": 0}), environ={})
    run_extract(base, DS)
    from lookalike.train.stage import run_train

    first = run_train(base, DS, progress=lambda *_: None)
    loaded = load_model(first["model_uri"])
    assert loaded.model.config.vision_config.hidden_size == 768 and loaded.preprocess.size == 224
    assert sum(p.numel() for p in loaded.model.parameters()) > 150e6
    child_cfg = load_config(write_config(_mkdir(tmp_path / "b"), sample_dir, model={"init": first["model_uri"]},
                                         train={"max_steps": 2, "batch_size": 4, "val_max_items": 4,
                                                "learning_rate": 1e-5, "warmup_steps": 1, "checkpoint_every": 0}),
                            environ={})
    run_extract(child_cfg, DS)
    child = run_train(child_cfg, DS, progress=lambda *_: None)
    meta = json.loads((ModelStore.at(child_cfg.models).version_dir(child["model_version"]) / "lookalike.json")
                      .read_text())
    assert meta["parent"] == first["model_version"] and meta["metrics"]["steps"] == 2
    del loaded


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path
