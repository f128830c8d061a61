import math

import numpy as np

from lookalike.evaluate.baselines import text_baseline_vectors
from lookalike.features import image_baseline_vectors, image_features
from lookalike.evaluate.metrics import bootstrap_ci, query_metrics
from lookalike.evaluate.stage import build_queries


def test_metrics_of_a_hand_ranked_query():
    # ranking by score: c (rel), a, d (rel), b
    scores = np.array([0.5, 0.1, 0.9, 0.3])
    rel = np.array([False, False, True, True])
    m = query_metrics(scores, rel, np.array(["a", "b", "c", "d"]))
    dcg = 1 / math.log2(2) + 1 / math.log2(4)
    idcg = 1 / math.log2(2) + 1 / math.log2(3)
    assert math.isclose(m[("ndcg", 5)], dcg / idcg)
    assert m[("precision", 1)] == 1.0
    assert math.isclose(m[("precision", 3)], 2 / 3)
    assert m[("recall", 10)] == 1.0
    assert m[("mrr", None)] == 1.0


def test_ties_are_broken_by_item_id():
    m = query_metrics(np.zeros(3), np.array([False, True, False]), np.array(["c", "a", "b"]))
    assert m[("mrr", None)] == 1.0  # "a" first among equal scores


def test_bootstrap_interval_brackets_the_mean():
    values = np.random.default_rng(0).random(500)
    lo, hi = bootstrap_ci(values)
    assert lo < values.mean() < hi and hi - lo < 0.1


def test_queries_group_module_impressions_and_clicks_by_source():
    events = {
        "event": ["impression", "impression", "impression", "click", "impression", "view"],
        "item_id": ["b", "c", "d", "c", "b", "a"],
        "source_item_id": ["a", "a", "a", "a", "x", None],
    }
    index = {k: i for i, k in enumerate("abcd")}
    (q,) = build_queries(events, index, min_candidates=2)  # "x" is unknown, it has no clicks anyway
    assert q.source == 0 and list(q.candidates) == [1, 2, 3] and list(q.relevant) == [False, True, False]


def test_the_colour_histogram_is_the_products_not_the_backgrounds():
    """A red and a blue product, each small on the same white background: their foreground histograms
    differ entirely; over the whole photo the background would make them near-identical."""
    from lookalike.features import colour_histogram, grey_thumbnail

    photos = np.full((3, 32, 32, 3), 250, dtype=np.uint8)
    photos[0, 12:20, 12:20] = (200, 20, 20)
    photos[1, 12:20, 12:20] = (20, 20, 200)
    photos[2, 4:28, 12:20] = (200, 20, 20)  # the red one's colour, another shape
    fg, whole = colour_histogram(photos), colour_histogram(photos, foreground=None)
    assert fg[0] @ fg[1] < 0.05 and whole[0] @ whole[1] > 0.9 and fg[0] @ fg[2] > 0.99
    grey = grey_thumbnail(photos)
    assert grey[0] @ grey[2] < grey[0] @ grey[1] and np.allclose(np.linalg.norm(grey, axis=1), 1, atol=1e-5)


def test_baselines_see_colour_and_words():
    red = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    red[..., 0] = 220
    blue = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    blue[..., 2] = 220
    pixels = np.concatenate([red, blue]) + np.random.default_rng(0).integers(0, 20, (4, 32, 32, 3)).astype(np.uint8)
    assert image_features(pixels).shape == (4, 8 ** 3 + 16 * 16 + 8 * 8 * 9)
    v = image_baseline_vectors(pixels, dim=3)
    assert v[0] @ v[1] > v[0] @ v[2]


def test_the_gradient_histogram_sees_where_edges_run():
    """A vertical stripe and a horizontal one have the same colours and pixel counts, and gradients in
    perpendicular orientations: their outlines differ, a stripe and its shifted copy's nearly agree."""
    from lookalike.features import gradient_histogram

    canvas = np.full((3, 64, 64, 3), 240, np.uint8)
    canvas[0, :, 28:36] = 30  # a vertical stripe
    canvas[1, :, 30:38] = 30  # the same, shifted two pixels
    canvas[2, 28:36, :] = 30  # a horizontal stripe
    g = gradient_histogram(canvas)
    assert g.shape == (3, 8 * 8 * 9) and np.allclose(np.linalg.norm(g, axis=1), 1, atol=1e-5)
    assert g[0] @ g[1] > 0.5 > g[0] @ g[2]
    assert not gradient_histogram(np.full((1, 64, 64, 3), 128, np.uint8)).any()  # a flat photo: no outline
    t = text_baseline_vectors(["red cotton tee", "red tee", "blue vase", ""])
    sims = (t @ t.T).toarray()
    assert sims[0, 1] > sims[0, 2] and sims[3, 0] == 0


# ---------------------------------------------------------------- against scikit-learn, on random inputs

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from sklearn.metrics import ndcg_score  # noqa: E402

from lookalike.evaluate.metrics import coverage, discriminates  # noqa: E402


@st.composite
def _queries(draw):
    """A query with distinct scores (sklearn averages over ties; ours breaks them by id) and a relevant item."""
    n = draw(st.integers(2, 30))
    scores = draw(st.lists(st.floats(-1, 1, allow_nan=False, allow_subnormal=False), min_size=n, max_size=n,
                           unique=True))
    relevant = draw(st.lists(st.booleans(), min_size=n, max_size=n).filter(any))
    return np.array(scores), np.array(relevant)


@settings(max_examples=300, deadline=None)
@given(_queries(), st.sampled_from([1, 3, 5, 10]))
def test_ndcg_agrees_with_scikit_learn(query, k):
    scores, relevant = query
    ids = np.array([f"i{j:03d}" for j in range(len(scores))])
    ours = query_metrics(scores, relevant, ids)
    expected = ndcg_score(relevant[None, :].astype(float), scores[None, :], k=k)
    if ("ndcg", k) in ours:
        assert math.isclose(ours[("ndcg", k)], expected, rel_tol=1e-9, abs_tol=1e-12)
    assert 0.0 <= ours[("ndcg", 5)] <= 1.0 and 0.0 <= ours[("ndcg", 10)] <= 1.0


@settings(max_examples=200, deadline=None)
@given(_queries())
def test_hand_cases_hold_on_random_queries(query):
    scores, relevant = query
    ids = np.array([f"i{j:03d}" for j in range(len(scores))])
    m = query_metrics(scores, relevant, ids)
    order = np.argsort(-scores)
    first_hit = int(np.flatnonzero(relevant[order])[0])
    assert math.isclose(m[("mrr", None)], 1 / (first_hit + 1))
    assert math.isclose(m[("precision", 1)], float(relevant[order][0]))
    if first_hit == 0 and relevant.sum() == 1:
        assert m[("ndcg", 5)] == 1.0  # the one relevant item first: perfect
    perfect = query_metrics(relevant.astype(float), relevant, ids)  # ranked by relevance itself
    assert math.isclose(perfect[("ndcg", 5)], 1.0) and math.isclose(perfect[("ndcg", 10)], 1.0)


def test_a_query_where_every_item_shown_was_clicked_cannot_discriminate():
    every = np.array([True, True, True])
    assert not discriminates(every) and not discriminates(~every)
    assert discriminates(np.array([True, False, False]))
    # every ranking of it scores 1: what the evaluation leaves out instead of reporting
    assert {query_metrics(s, every, np.array(["a", "b", "c"]))[("ndcg", 5)]
            for s in (np.array([0.1, 0.2, 0.3]), np.array([0.3, 0.2, 0.1]))} == {1.0}


def test_coverage_counts_the_items_some_list_reaches():
    # two tight clusters of 3 plus one outlier no list reaches with k=2
    vectors = np.array([[1, 0, 0], [0.99, 0.14, 0], [0.99, 0, 0.14], [0, 1, 0], [0.14, 0.99, 0], [0, 0.99, 0.14],
                        [-0.7, -0.7, 0.1]], dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    value, n = coverage(vectors, 2)
    assert n == 7 and math.isclose(value, 6 / 7)
