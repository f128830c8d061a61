"""Incremental embedding: unchanged (item_id, image_sha256, model_version) rows are reused."""
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lookalike.config import load_config
from lookalike.embed.stage import run_embed
from lookalike.extract.stage import run_extract
from lookalike.storage import Warehouse
from tests.conftest import DS, tiny_model as _model, write_config

NEXT = "2026-11-22"


def _vectors(path):
    t = pq.read_table(path)
    return {i: np.array(v) for i, v in zip(t.column("item_id").to_pylist(), t.column("embedding").to_pylist())}


@pytest.fixture
def setup(tmp_path, sample_dir):
    cfg = load_config(write_config(tmp_path, sample_dir), environ={})  # default local_max_rows: in-process
    run_extract(cfg, DS)
    return cfg, Warehouse.of(cfg)


def _publish_embeddings(wh, ds, out):
    files = sorted(out.glob("*.parquet"))
    publication = wh.begin(ds)
    publication.add("item_embeddings", files, rows=sum(pq.read_metadata(f).num_rows for f in files))
    publication.commit(retain=5)


def _next_day_catalogue(wh, changed: list[str], new_item_from: str) -> None:
    """NEXT's catalogue: DS's, with new photos for ``changed`` and one new listing."""
    table = pq.read_table(wh.work(DS, "catalog"))
    rows = table.to_pylist()
    donor = rows[-1]["image"]
    for r in rows:
        r["ds"] = NEXT
        if r["item_id"] in changed:
            r["image"], r["image_sha256"] = donor, f"new-{r['item_id']}"
    extra = dict(next(r for r in rows if r["item_id"] == new_item_from), item_id="brand-new", image_sha256="n1")
    target = wh.fresh_work(NEXT, "catalog")
    pq.write_table(pa.Table.from_pylist(rows + [extra], schema=table.schema), target / "part-0.parquet")


@pytest.mark.parametrize("executor", ["in-process", "spark"])
def test_only_changed_and_new_items_are_computed(setup, tmp_path, executor):
    cfg, wh = setup
    if executor == "spark":
        cfg = load_config(tmp_path / "lookalike.yaml", environ={"LOOKALIKE_EMBED__LOCAL_MAX_ROWS": "0"})
    model = _model(tmp_path / "m1", 0, "v1")
    first = run_embed(cfg, DS, model_uri=model)
    assert first["reused"] == 0 and first["computed"] == first["catalogue"] and first["executor"] == executor
    _publish_embeddings(wh, DS, wh.work(DS, "item_embeddings"))
    before = _vectors(wh.work(DS, "item_embeddings"))

    ids = sorted(before)
    _next_day_catalogue(wh, changed=ids[:2], new_item_from=ids[5])
    second = run_embed(cfg, NEXT, model_uri=model)
    assert (second["reused"], second["computed"], second["executor"]) == (len(ids) - 2, 3, executor)
    after = _vectors(wh.work(NEXT, "item_embeddings"))
    assert set(after) == set(ids) | {"brand-new"}
    assert all(np.array_equal(after[i], before[i]) for i in ids[2:])  # reused exactly
    assert not np.allclose(after[ids[0]], before[ids[0]])  # a new photo is re-embedded
    assert np.allclose(after["brand-new"], before[ids[5]], atol=1e-6)  # same photo, same vector
    assert set(pq.read_table(wh.work(NEXT, "item_embeddings")).column("ds").to_pylist()) == {NEXT}

    third = run_embed(cfg, NEXT, model_uri=_model(tmp_path / "m2", 1, "v2"))  # a new model version
    assert third["reused"] == 0 and third["computed"] == len(ids) + 1


def test_rollback_reuses_an_older_partition_of_the_serving_model(setup, tmp_path):
    cfg, wh = setup
    v1, v2 = _model(tmp_path / "m1", 0, "v1"), _model(tmp_path / "m2", 1, "v2")
    run_embed(cfg, DS, model_uri=v1)
    _publish_embeddings(wh, DS, wh.work(DS, "item_embeddings"))
    shutil.copytree(wh.work(DS, "catalog"), wh.fresh_work(NEXT, "catalog"), dirs_exist_ok=True)
    run_embed(cfg, NEXT, model_uri=v2)
    _publish_embeddings(wh, NEXT, wh.work(NEXT, "item_embeddings"))
    again = run_embed(cfg, NEXT, model_uri=v1)  # production rolled back to v1
    assert again["computed"] == 0 and again["reused"] == again["catalogue"]


def test_pca_and_float16_storage(setup, tmp_path):
    from lookalike.projection import projection_path
    from lookalike.neighbors.stage import load_embeddings

    cfg, wh = setup
    model = _model(tmp_path / "m1", 0, "v1")
    full = run_embed(cfg, DS, model_uri=model)
    full_vectors = _vectors(wh.work(DS, "item_embeddings"))
    small = load_config(tmp_path / "lookalike.yaml",
                        environ={"LOOKALIKE_EMBED__PCA_DIM": "8", "LOOKALIKE_EMBED__FLOAT16": "true"})
    out = run_embed(small, DS, model_uri=model)
    assert out["model_version"] == "v1+pca8" and out["computed"] == full["computed"]
    assert projection_path(model, 8).exists()  # stored with the model version, reused next time
    table = pq.read_table(out["item_embeddings"])
    assert table.schema.field("embedding").type.value_type == pa.float16()
    ids, vectors, version = load_embeddings(out["item_embeddings"])
    assert vectors.shape == (len(full_vectors), 8) and version == "v1+pca8"
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=2e-3)
    # The projection keeps most of the neighbourhood structure of the 32-d space.
    full = np.stack([full_vectors[i] for i in ids.to_pylist()])
    top_full = np.argsort(-(full @ full.T), axis=1)[:, 1:6]
    top_pca = np.argsort(-(vectors @ vectors.T), axis=1)[:, 1:6]
    overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(top_full, top_pca)])
    assert overlap > 0.3
