import math

import numpy as np

from pipelines.evaluate.baselines import image_baseline_vectors, image_features, text_baseline_vectors
from pipelines.evaluate.metrics import bootstrap_ci, query_metrics
from pipelines.evaluate.stage import build_queries


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


def test_baselines_see_colour_and_words():
    red = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    red[..., 0] = 220
    blue = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    blue[..., 2] = 220
    pixels = np.concatenate([red, blue]) + np.random.default_rng(0).integers(0, 20, (4, 32, 32, 3)).astype(np.uint8)
    assert image_features(pixels).shape == (4, 64 + 192)
    v = image_baseline_vectors(pixels, dim=3)
    assert v[0] @ v[1] > v[0] @ v[2]
    t = text_baseline_vectors(["red cotton tee", "red tee", "blue vase", ""])
    sims = (t @ t.T).toarray()
    assert sims[0, 1] > sims[0, 2] and sims[3, 0] == 0
