"""The Spark embed job against the single-process function, on a real local Spark session."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lookalike.config import load_config
from lookalike.extract.stage import run_extract
from lookalike.siglip import Preprocess, build_config, embed_images, init_siglip_head, load_model, save_model, \
    train_tokenizer
from lookalike.storage import Warehouse
from tests.conftest import DS, write_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory, sample_dir):
    from transformers import SiglipModel

    root = tmp_path_factory.mktemp("embed")
    cfg = load_config(write_config(root, sample_dir, embed={"arrow_batch_rows": 64, "local_max_rows": 0}),
                      environ={})
    run_extract(cfg, DS)
    tok = train_tokenizer(["red tee", "blue vase", "green lamp"] * 10, 40, 16)
    torch.manual_seed(0)
    model = SiglipModel(build_config("tiny", vocab_size=len(tok), max_text_length=16))
    init_siglip_head(model)
    model_dir = root / "model"
    save_model(model, tok, Preprocess(32), model_dir, {"version": "test-v1"})
    # One catalogue row whose stored image no longer decodes: it must be quarantined, not fatal.
    catalog = Warehouse.of(cfg).work(DS, "catalog") / "part-0.parquet"
    table = pq.read_table(catalog)
    images = table.column("image").to_pylist()
    images[3] = b"\xff\xd8\xff garbage"
    pq.write_table(table.set_column(table.schema.get_field_index("image"), "image", pa.array(images, pa.binary())),
                   catalog)
    return cfg, model_dir, table.column("item_id")[3].as_py()


def test_spark_embeddings_equal_the_single_process_function(setup):
    from lookalike.embed.stage import run_embed

    cfg, model_dir, broken = setup
    out = run_embed(cfg, DS, model_uri=str(model_dir))
    assert out["model_version"] == "test-v1" and out["executor"] == "spark"
    got = pq.read_table(out["item_embeddings"]).to_pylist()
    catalog = pq.read_table(Warehouse.of(cfg).work(DS, "catalog")).to_pylist()
    good = [r for r in catalog if r["item_id"] != broken]
    expected = embed_images(load_model(model_dir), [r["image"] for r in good])
    by_id = {r["item_id"]: np.array(r["embedding"]) for r in got}
    assert set(by_id) == {r["item_id"] for r in good}
    diff = max(np.abs(by_id[r["item_id"]] - e).max() for r, e in zip(good, expected))
    assert diff < 1e-5
    assert all(r["ds"] == DS and r["model_version"] == "test-v1" for r in got)

    quarantine = pq.read_table(Warehouse.of(cfg).work(DS, "embed_quarantine")).to_pylist()
    assert [(q["item_id"], q["stage"]) for q in quarantine] == [(broken, "embed")]
    assert "does not decode" in quarantine[0]["reason"]
