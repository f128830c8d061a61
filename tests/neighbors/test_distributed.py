"""The all-items search as Spark tasks equals the in-process search on the same index, on a real
local Spark session: exact, IVF and HNSW indexes, category groups and every filter."""
import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lookalike.config import load_config
from lookalike.neighbors import distributed
from lookalike.neighbors.search import Exclusions, build_searcher, plan_index, search_blocks
from lookalike.neighbors.stage import build_neighbors, neighbor_table
from tests.conftest import write_config

N, DIM, K = 3000, 24, 10


class Rows:
    def __init__(self):
        self.tables = []

    def write_table(self, table):
        self.tables.append(table)


def _data(seed=0, noise=0.3):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, DIM))
    vectors = centres[rng.integers(0, 40, N)] + noise * rng.standard_normal((N, DIM))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    ids = pa.array([f"item-{i:05d}" for i in range(N)])
    on_sale = rng.random(N) < 0.8
    codes = {"categories": rng.integers(0, 3, N), "sellers": rng.integers(-1, 300, N),
             "images": np.where(rng.random(N) < 0.1, rng.integers(0, 50, N), -1)}
    return vectors, ids, on_sale, codes


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([("item_id", "ascending"), ("rank", "ascending")])


@pytest.fixture(scope="module")
def cfg(tmp_path_factory, sample_dir):
    root = tmp_path_factory.mktemp("spark-neighbors")
    return load_config(write_config(root, sample_dir), environ={})


def _spark_rows(out) -> pa.Table:
    parts = sorted(out.iterdir())
    assert parts and all(p.name.startswith("part-") and p.suffix == ".parquet" for p in parts)
    return pa.concat_tables([pq.read_table(p) for p in parts])


@pytest.mark.parametrize("case", [
    {},
    {"exclude_same_seller": True, "drop_same_image": True, "same_category": True},
], ids=["plain", "filters-and-categories"])
def test_the_spark_stage_writes_the_rows_of_the_in_process_stage(cfg, tmp_path, case):
    vectors, ids, on_sale, codes = _data()
    ncfg = dataclasses.replace(cfg.neighbors, k=K, block_size=700, index="flat", **case)
    local = Rows()
    expected = build_neighbors(vectors, ids, ncfg=ncfg, on_sale=on_sale, writer=local, ds="2026-11-21",
                               version="v1", **codes)
    out = tmp_path / "item_neighbors"
    out.mkdir()
    got = build_neighbors(vectors, ids, ncfg=ncfg, on_sale=on_sale, writer=None, ds="2026-11-21", version="v1",
                          spark=(cfg, tmp_path / distributed.SEARCH_DIR, out), **codes)
    assert not (tmp_path / distributed.SEARCH_DIR).exists()
    rows = _spark_rows(out)
    assert rows.schema.equals(local.tables[0].schema)
    assert _sorted(rows).equals(_sorted(pa.concat_tables(local.tables)))
    groups = 3 if case.get("same_category") else 1
    assert got["executor"] == "spark" and got["spark"]["tasks"] == len(list(out.iterdir())) > groups
    for key in ("rows", "short_items", "same_image_rows", "recall_at_k", "index"):
        assert got[key] == expected[key], key
    assert expected["rows"] > 0.7 * N * K and (expected["same_image_rows"] > 0) != case.get("drop_same_image", False)


@pytest.mark.parametrize("kind,knob", [("ivf", 2), ("ivfpq", 4), ("hnsw", 12)])
def test_an_approximate_index_written_once_searches_on_spark_as_in_process(cfg, tmp_path, kind, knob):
    """The index the driver built and tuned is the one every task loads, with its knob (a
    list of 11 needs efSearch >= 11 on HNSW: set per search, so no block changes the next)."""
    vectors, ids, on_sale, codes = _data(2, noise=1.0)
    candidates = np.flatnonzero(on_sale)
    members = np.arange(N)
    plan = plan_index(len(candidates), DIM, kind=kind)
    searcher = build_searcher(vectors, candidates, plan)
    searcher.set_knob(knob)
    exclusions = Exclusions([codes["sellers"]])
    local = [neighbor_table("2026-11-21", "v1", ids, codes["images"], *block[:3], K)
             for block in search_blocks(searcher, vectors, members, K, n_candidates=len(candidates),
                                        exclusions=exclusions, block=700)]
    folder = distributed.SearchFolder(tmp_path / distributed.SEARCH_DIR, vectors, ids, codes["images"], exclusions,
                                      k=K, ds="2026-11-21", version="v1", block=700)
    folder.add_group(members, candidates, plan, searcher, {"value": knob})
    out = tmp_path / "item_neighbors"
    out.mkdir()
    searched = distributed.search_on_spark(cfg, folder, out)
    assert searched["tasks"] == 5 and searched["groups"][0]["rows"] == sum(t.num_rows for t in local)
    exact = build_searcher(vectors, candidates, plan_index(len(candidates), DIM, kind="flat"))
    exact_rows = pa.concat_tables([neighbor_table("2026-11-21", "v1", ids, codes["images"], *block[:3], K)
                                   for block in search_blocks(exact, vectors, members, K, n_candidates=len(candidates),
                                                              exclusions=exclusions, block=700)])
    assert not _sorted(exact_rows).equals(_sorted(pa.concat_tables(local)))  # approximate: the index mattered
    assert _sorted(_spark_rows(out)).equals(_sorted(pa.concat_tables(local)))


@pytest.mark.parametrize("case", [
    {"index": "flat", "exclude_same_seller": True, "drop_same_image": True, "same_category": True},
    {"index": "auto", "exact_max_items": 500, "exclude_same_seller": True, "drop_same_image": False},
], ids=["exact-filters-and-categories", "carried-inverted-file"])
def test_the_nights_update_on_spark_equals_the_update_in_process(cfg, tmp_path, case):
    """A first night searched in one process keeps its lists (and, approximate, its index); the next
    night, items replaced, moved and sold, updates them in one process and as Spark tasks: the same rows
    and the same lists, with the same counts."""
    from lookalike.neighbors import update
    from lookalike.neighbors.output import ListsCollector, positions_in
    from lookalike.neighbors.search import full_lists, item_keys, rekey

    vectors, ids, on_sale, codes = _data(3)
    ncfg = dataclasses.replace(cfg.neighbors, k=K, margin=4, block_size=700, recall_sample=200, **case)
    length = K + ncfg.margin
    first = ListsCollector(N, length)

    if case["index"] == "flat":
        build_neighbors(vectors, ids, ncfg=ncfg, on_sale=on_sale, writer=Rows(), ds="d1", version="v1",
                        lists_out=first, **codes)
    else:  # an inverted file at a fixed nprobe (tuning would find exact search as fast on so few items)
        candidates = np.flatnonzero(on_sale)
        searcher = build_searcher(vectors, candidates, plan_index(len(candidates), DIM, kind="ivf"))
        searcher.set_knob(4)
        first.write(np.arange(N), full_lists(searcher, vectors, np.arange(N), n_candidates=len(candidates), k=K,
                                             length=length, exclusions=Exclusions([codes["sellers"]])))
        keys = item_keys(ids)
        rekey(searcher.index, keys)
        update.save_index(searcher.index, keys[on_sale], tmp_path / "kept", {"kind": "ivf", "knob": "nprobe",
                                                                             "value": 4, "built_on": "d1"})
    first.save(tmp_path / "lists")

    rng = np.random.default_rng(4)
    today = vectors.copy()
    moved = rng.choice(N, 60, replace=False)
    today[moved] = _data(9)[0][:60]
    today_ids = np.array(ids.to_pylist(), dtype=object)
    replaced = rng.choice(np.setdiff1d(np.arange(N), moved), 60, replace=False)
    today_ids[replaced] = [f"new-{i:05d}" for i in range(60)]
    today[replaced] = _data(10)[0][:60]
    sold = rng.choice(np.setdiff1d(np.arange(N), np.concatenate([moved, replaced])), 30, replace=False)
    today_on_sale = on_sale.copy()
    today_on_sale[sold] = False
    order = np.argsort(today_ids)
    today_ids, today, today_on_sale = pa.array(today_ids[order].tolist()), today[order], today_on_sale[order]
    today_codes = {name: c[order] for name, c in codes.items()}
    fresh = np.isin(order, np.concatenate([moved, replaced, sold]))

    def run(spark):
        previous = update.carried_lists(tmp_path / "lists", ids, today_ids, positions_in(today_ids, ids))
        lists, local, out = ListsCollector(N, length), Rows(), tmp_path / f"out-{bool(spark)}"
        out.mkdir()
        stats = update.update_neighbors(today, today_ids, ncfg=ncfg, on_sale=today_on_sale, previous=previous,
                                        fresh=fresh, writer=None if spark else local, lists_out=lists, ds="d2",
                                        version="v1", kept_index=update.load_index(tmp_path / "kept"),
                                        index_out=tmp_path / f"index-{bool(spark)}",
                                        spark=(cfg, tmp_path / distributed.SEARCH_DIR, out) if spark else None,
                                        **today_codes)
        return stats, lists.lists, _spark_rows(out) if spark else pa.concat_tables(local.tables)

    here, lists_here, rows_here = run(False)
    there, lists_there, rows_there = run(True)
    assert not (tmp_path / distributed.SEARCH_DIR).exists() and there["executor"] == "spark"
    assert _sorted(rows_there).equals(_sorted(rows_here))
    for name in ("pos", "scores", "bar", "bar_pos"):
        np.testing.assert_array_equal(getattr(lists_there, name), getattr(lists_here, name))
    for key in ("rows", "short_items", "same_image_rows", "kept", "fresh", "ran_out", "touched"):
        assert there[key] == here[key], key
    assert here["fresh"] == fresh.sum() and here["touched"] > 0
    assert ("carried forward" in here["groups"][0]["reason"]) == (case["index"] == "auto")
