import numpy as np

from pipelines.neighbors.core import top_k_neighbors


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_matches_brute_force_cosine():
    rng = np.random.default_rng(0)
    vecs = _unit(rng.normal(size=(200, 16)))
    ids = np.array([f"i{i}" for i in range(200)], dtype=object)
    nbr, scores = top_k_neighbors(vecs, ids, 5, block=64)
    sims = vecs @ vecs.T
    np.fill_diagonal(sims, -np.inf)
    expected = np.argsort(-sims, axis=1)[:, :5]
    assert (nbr == ids[expected]).all()
    assert np.allclose(scores, np.take_along_axis(sims, expected, axis=1), atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_self_is_removed_by_id_and_duplicates_stay():
    vecs = _unit(np.array([[1, 0], [1, 0], [0.9, 0.1], [0, 1]], dtype=np.float32))
    ids = np.array(["a", "b", "c", "d"], dtype=object)  # a and b share the exact same vector
    nbr, scores = top_k_neighbors(vecs, ids, 2)
    assert list(nbr[0]) == ["b", "c"] and list(nbr[1]) == ["a", "c"]
    assert abs(scores[0, 0] - 1.0) < 1e-6


def test_only_candidates_are_returned_and_short_lists_are_padded():
    vecs = _unit(np.eye(4, dtype=np.float32) + 0.1)
    ids = np.array(["a", "b", "c", "d"], dtype=object)
    mask = np.array([True, True, False, False])
    nbr, scores = top_k_neighbors(vecs, ids, 2, candidate_mask=mask)
    assert set(nbr[2]) == {"a", "b"}  # a sold item gets on-sale neighbours
    assert nbr[0][0] == "b" and nbr[0][1] is None and np.isnan(scores[0, 1])
