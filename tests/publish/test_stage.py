"""Publishing: checks gate the commit; a refused or crashed publish leaves the last one readable."""
import numpy as np
import pyarrow as pa
import pytest

from pipelines import schemas
from pipelines.config import load_config
from pipelines.publish.checks import check_neighbors
from pipelines.publish.stage import PublishCheckFailed, run_publish
from pipelines.query import run_query
from pipelines.storage import Warehouse, write_parquet
from tests.conftest import write_config

DS = "2026-11-21"
K = 2


def _stage_run(wh: Warehouse, ds: str, *, score_shift: float = 0.0, self_neighbor: bool = False) -> None:
    """A small, valid work area for ``ds`` (4 on-sale items, k=2), made by hand."""
    ids = ["a", "b", "c", "d"]
    listing = {f.name: [None] * 4 for f in schemas.LISTING_FIELDS}
    listing.update(item_id=ids, title=["t1", "t2", "t3", "t4"], status=["on_sale"] * 4)
    items = pa.Table.from_pydict({**listing, "ds": [ds] * 4, "image": [b"x"] * 4, "image_width": [1] * 4,
                                  "image_height": [1] * 4, "image_sha256": ["h1", "h2", "h3", "h4"]},
                                 schema=schemas.ITEMS)
    for name in ("listings_snapshot", "catalog"):
        write_parquet(items, wh.fresh_work(ds, name) / "part-0.parquet")
    for name in ("quarantine", "embed_quarantine"):
        write_parquet(pa.Table.from_pylist([], schema=schemas.QUARANTINE), wh.fresh_work(ds, name) / "part-0.parquet")
    vecs = np.eye(4, dtype=np.float32)
    write_parquet(pa.Table.from_pydict({"ds": [ds] * 4, "item_id": ids, "model_version": ["v"] * 4,
                                        "image_sha256": ["h1", "h2", "h3", "h4"], "embedding": vecs.tolist()},
                                       schema=schemas.ITEM_EMBEDDINGS), wh.fresh_work(ds, "item_embeddings") / "p.parquet")
    nbrs = {"a": ["b", "c"], "b": ["a", "c"], "c": ["d", "a"], "d": ["c", "a"]}
    if self_neighbor:
        nbrs["a"] = ["a", "b"]
    rows = [{"ds": ds, "item_id": i, "rank": r + 1, "neighbor_id": n, "score": 0.5 - 0.1 * r + score_shift,
             "model_version": "v"} for i in ids for r, n in enumerate(nbrs[i])]
    write_parquet(pa.Table.from_pylist(rows, schema=schemas.ITEM_NEIGHBORS),
                  wh.fresh_work(ds, "item_neighbors") / "part-0.parquet")
    metric = {"ds": ds, "system": "siglip", "model_version": "v", "metric": "ndcg", "k": 5, "value": 0.5,
              "ci_low": 0.4, "ci_high": 0.6, "n": 10}
    write_parquet(pa.Table.from_pylist([metric], schema=schemas.EVAL_METRICS),
                  wh.fresh_work(ds, "eval_metrics") / "part-0.parquet")


@pytest.fixture
def setup(tmp_path, sample_dir):
    cfg = load_config(write_config(tmp_path, sample_dir, neighbors={"k": K}), environ={})
    return cfg, Warehouse.at(cfg.warehouse)


def _scores(wh):
    return run_query(wh, "select score from item_neighbors where item_id = 'a' and rank = 1")[1]


def test_publish_then_a_failing_check_publishes_nothing(setup):
    cfg, wh = setup
    _stage_run(wh, DS)
    run_publish(cfg, DS)
    assert run_query(wh, "select count(*) from item_neighbors")[1] == [(4 * K,)]
    _stage_run(wh, DS, score_shift=0.1, self_neighbor=True)
    with pytest.raises(PublishCheckFailed, match="list themselves as a neighbour"):
        run_publish(cfg, DS)
    assert _scores(wh) == [(pytest.approx(0.5),)]  # the previous partition, intact


def test_a_crash_between_writing_and_committing_keeps_the_previous_partition(setup, monkeypatch):
    cfg, wh = setup
    _stage_run(wh, DS)
    run_publish(cfg, DS)
    _stage_run(wh, DS, score_shift=0.2)

    import pipelines.storage as storage

    real = storage.atomic_write_text

    def crash_on_neighbors(path, text):  # the item_neighbors manifest switch fails mid-run
        if "item_neighbors" in str(path):
            raise OSError("simulated crash before the commit")
        return real(path, text)

    monkeypatch.setattr(storage, "atomic_write_text", crash_on_neighbors)
    with pytest.raises(OSError):
        run_publish(cfg, DS)
    assert _scores(wh) == [(pytest.approx(0.5),)]
    monkeypatch.setattr(storage, "atomic_write_text", real)
    run_publish(cfg, DS)  # the rerun completes and publishes once
    assert _scores(wh) == [(pytest.approx(0.7),)]
    assert run_query(wh, "select count(*) from item_neighbors_all")[1] == [(4 * K,)]
    runs = list((wh.table_dir("item_neighbors") / f"ds={DS}").iterdir())
    assert len(runs) == 1  # the crashed run's files were cleaned up by the successful one


def test_neighbor_checks_catch_each_breach():
    def table(rows):
        return pa.Table.from_pylist([{"ds": DS, "item_id": i, "rank": r, "neighbor_id": n, "score": s,
                                      "model_version": "v"} for i, r, n, s in rows], schema=schemas.ITEM_NEIGHBORS)

    ok = [("a", 1, "b", 0.9), ("a", 2, "c", 0.8), ("b", 1, "a", 0.9), ("b", 2, "c", 0.1)]
    active, embedded = {"a", "b", "c"}, {"a", "b"}
    assert check_neighbors(table(ok), k=2, active_ids=active, embedded_ids=embedded) == []
    cases = {
        "not descending": [("a", 1, "b", 0.1), ("a", 2, "c", 0.8)] + ok[2:],
        "not on sale": ok[:3] + [("b", 2, "z", 0.1)],
        "outside [-1, 1]": ok[:3] + [("b", 2, "c", 1.5)],
        "exactly k=2": ok[:3],
    }
    for expected, rows in cases.items():
        failures = check_neighbors(table(rows), k=2, active_ids=active, embedded_ids=embedded)
        assert any(expected in f for f in failures), (expected, failures)
