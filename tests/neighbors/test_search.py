"""Index choice, recall tuning, blocked search and filters, checked against brute force."""
import numpy as np
import pyarrow as pa
import pytest

from lookalike.config import NeighborsConfig
from lookalike.errors import ConfigError
from lookalike.neighbors.search import (FlatSearcher, TorchSearcher, build_searcher, plan_index,
                                        recall_at_k, search_blocks, tune)
from lookalike.neighbors.stage import build_neighbors


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(n, dim, clusters, seed=0, spread=0.35):
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(clusters, dim)))
    return _unit(centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, dim)) / np.sqrt(dim) * 4)


def _brute(vectors, candidates, k):
    sims = vectors @ vectors[candidates].T
    sims[candidates, np.arange(len(candidates))] = -np.inf  # self
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return candidates[order], np.take_along_axis(sims, order, 1)


class ListWriter:
    def __init__(self):
        self.tables = []

    def write_table(self, table):
        self.tables.append(table)

    def table(self):
        return pa.concat_tables(self.tables)


def test_exact_search_in_chunks_matches_brute_force_on_a_candidate_subset():
    vectors = _unit(np.random.default_rng(0).normal(size=(300, 16)))
    candidates = np.flatnonzero(np.arange(300) % 3 != 0)
    searcher = FlatSearcher(vectors, candidates, chunk=37)  # several chunks merged
    queries = np.arange(300)
    blocks = list(search_blocks(searcher, vectors, queries, 5, n_candidates=len(candidates), block=64))
    got = np.vstack([p for _, p, _, _ in blocks])
    scores = np.vstack([s for _, _, s, _ in blocks])
    expected, expected_scores = _brute(vectors, candidates, 5)
    assert (got == expected).all()
    assert np.allclose(scores, expected_scores, atol=1e-5)


def test_the_torch_path_gives_the_same_results_as_faiss():
    vectors = _unit(np.random.default_rng(1).normal(size=(500, 32)))
    candidates = np.arange(0, 500, 2)
    flat_s, flat_p = FlatSearcher(vectors, candidates).search(vectors[:100], 10)
    torch_s, torch_p = TorchSearcher(vectors, candidates, "cpu").search(vectors[:100], 10)
    assert (flat_p == torch_p).all()
    assert np.allclose(flat_s, torch_s, atol=1e-5)


def test_the_plan_follows_size_budget_and_device():
    assert plan_index(10_000, 128).kind == "flat"
    ivf = plan_index(1_000_000, 128)
    assert ivf.kind == "ivf" and ivf.nlist == 4000
    assert plan_index(1_000_000, 128, memory_budget_mb=800).kind == "ivfpq"
    assert plan_index(1_000_000, 128, cuda=True).kind == "torch"
    assert plan_index(500, 8, kind="hnsw").kind == "hnsw"
    with pytest.raises(ConfigError, match="neighbors.index"):
        plan_index(10, 8, kind="annoy")


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_an_approximate_index_is_tuned_to_the_recall_target(kind):
    vectors = _clustered(6000, 32, clusters=40)
    candidates = np.arange(len(vectors))
    searcher = build_searcher(vectors, candidates, plan_index(len(vectors), 32, kind=kind))
    tuning = tune(searcher, vectors, candidates, candidates, 10, target=0.95, sample=300)
    assert tuning["recall_at_k"] >= 0.95 and not tuning["exact"]
    assert [t[0] for t in tuning["trials"]] == list(searcher.knob_values[:len(tuning["trials"])])
    assert tuning["recall_low"] >= 0.95 and tuning["recall_low"] <= tuning["recall_at_k"]
    # the recall measured on the sample holds for the whole run
    queries = np.arange(0, 6000, 7)
    _, approx = searcher.search(vectors[queries], 11)
    _, exact = FlatSearcher(vectors, candidates).search(vectors[queries], 11)
    assert recall_at_k(approx, exact, queries, 10) >= 0.93


def test_ivfpq_runs_and_reports_the_recall_it_reached():
    vectors = _clustered(4000, 32, clusters=30)
    candidates = np.arange(len(vectors))
    searcher = build_searcher(vectors, candidates, plan_index(len(vectors), 32, kind="ivfpq"))
    tuning = tune(searcher, vectors, candidates, candidates, 10, target=0.99, sample=200)
    assert 0.2 < tuning["recall_at_k"] <= 1.0  # compressed codes: the reached recall is recorded, not assumed


def test_self_is_removed_by_position_and_duplicate_photos_are_flagged_or_dropped():
    vectors = _unit(np.array([[1, 0, 0], [1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.9, 0.1]], np.float32))
    ids = pa.array(["a", "b", "c", "d", "e"])
    images = np.array([7, 7, 1, 2, 3])  # a and b: the same photo under two item ids
    on_sale = np.ones(5, bool)

    def run(**options):
        writer = ListWriter()
        build_neighbors(vectors, ids, ncfg=NeighborsConfig(k=2, **options), on_sale=on_sale, writer=writer,
                        ds="d", version="v", images=images)
        return {(r["item_id"], r["rank"]): (r["neighbor_id"], r["same_image"]) for r in writer.table().to_pylist()}

    rows = run()
    assert rows[("a", 1)] == ("b", True) and rows[("b", 1)] == ("a", True)  # identical vector, other id: kept
    assert rows[("a", 2)] == ("c", False)
    dropped = run(drop_same_image=True)
    assert dropped[("a", 1)] == ("c", False) and dropped[("a", 2)][0] in {"d", "e"}


def test_filters_same_seller_and_same_category_and_on_sale():
    rng = np.random.default_rng(3)
    n = 400
    vectors = _unit(rng.normal(size=(n, 8)))
    ids = pa.array([f"i{i:03d}" for i in range(n)])
    categories, sellers = rng.integers(0, 4, n), rng.integers(0, 20, n)
    on_sale = rng.random(n) > 0.2
    writer = ListWriter()
    stats = build_neighbors(vectors, ids, ncfg=NeighborsConfig(k=5, same_category=True, exclude_same_seller=True,
                                                               block_size=50),
                            on_sale=on_sale, writer=writer, ds="d", version="v", categories=categories,
                            sellers=sellers)
    table = writer.table()
    pos = {f"i{i:03d}": i for i in range(n)}
    q = np.array([pos[i] for i in table.column("item_id").to_pylist()])
    nb = np.array([pos[i] for i in table.column("neighbor_id").to_pylist()])
    assert (categories[q] == categories[nb]).all()
    assert (sellers[q] != sellers[nb]).all()
    assert on_sale[nb].all() and (q != nb).all()
    assert stats["rows"] == table.num_rows == 5 * n  # every item got a full list (rows re-searched deeper)
    assert len(stats["groups"]) == 4
    # each list is the brute-force answer under the same filters
    for item in range(0, n, 37):
        allowed = np.flatnonzero(on_sale & (categories == categories[item]) & (sellers != sellers[item]))
        allowed = allowed[allowed != item]
        best = allowed[np.argsort(-(vectors[allowed] @ vectors[item]), kind="stable")[:5]]
        assert list(nb[q == item]) == list(best)


def test_structureless_data_falls_back_to_exact_search_with_the_reason():
    rng = np.random.default_rng(5)
    n = 4000
    vectors = _unit(rng.normal(size=(n, 64)))  # no cluster structure: IVF needs most lists for 0.95
    ids = pa.array([f"i{i:04d}" for i in range(n)])
    writer = ListWriter()
    stats = build_neighbors(vectors, ids, ncfg=NeighborsConfig(k=5, index="ivf", device="cpu"),
                            on_sale=np.ones(n, bool), writer=writer, ds="d", version="v")
    group = stats["groups"][0]
    assert group["index"] == "flat" and "not faster than exact" in group["reason"], group
    assert group["use_exact"] and group["recall_at_k"] == 1.0
    got = np.array([int(i[1:]) for i in writer.table().column("neighbor_id").to_pylist()]).reshape(n, 5)
    expected, _ = _brute(vectors, np.arange(n), 5)
    assert (got == expected).all()
