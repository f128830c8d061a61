"""The lists the stores hold are the published rows, grouped: every key once, its members in rank
order, scores unchanged as float32; the JSON value reads back to the same list, whatever the ids hold."""
import json

import numpy as np
import pyarrow as pa
from hypothesis import given, settings, strategies as st

from lookalike import schemas
from lookalike.online.lists import BY_NAME, decode_json, encode_json, lists_of, plain_ids, same_list

ids = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)


@st.composite
def neighbour_rows(draw):
    items = draw(st.lists(ids, min_size=1, max_size=15, unique=True))
    rows = []
    for item in items:
        k = draw(st.integers(1, 6))
        for rank in draw(st.permutations(list(range(1, k + 1)))):
            rows.append({"ds": "2026-11-01", "item_id": item, "rank": rank, "neighbor_id": draw(ids),
                         "score": draw(st.floats(-1, 1, width=32)), "same_image": False, "model_version": "v"})
    return pa.Table.from_pylist(draw(st.permutations(rows)), schema=schemas.ITEM_NEIGHBORS)


def _naive(rows: pa.Table) -> dict:
    grouped = {}
    for r in sorted(rows.to_pylist(), key=lambda r: (r["item_id"], r["rank"])):
        grouped.setdefault(r["item_id"], ([], []))
        grouped[r["item_id"]][0].append(r["neighbor_id"])
        grouped[r["item_id"]][1].append(r["score"])
    return grouped


@settings(max_examples=150, deadline=None)
@given(neighbour_rows())
def test_lists_are_the_rows_grouped_in_rank_order_and_json_reads_back(rows):
    spec = BY_NAME["item_neighbors"]
    lists = lists_of(rows, spec)
    expected = _naive(rows)
    assert lists.column("item_id").to_pylist() == sorted(expected)  # one row per item, ordered by id
    for item, got_ids, got_scores in zip(*(lists.column(c).to_pylist() for c in ("item_id", "ids", "scores"))):
        assert same_list(expected[item], (got_ids, got_scores))
    for value, (item, (want_ids, want_scores)) in zip(encode_json(lists, spec), sorted(expected.items())):
        json.loads(value)  # valid JSON whatever the ids hold
        assert same_list((want_ids, want_scores), decode_json(value))


def test_arms_group_by_experiment_variant_and_item():
    spec = BY_NAME["item_neighbors_variants"]
    rows = pa.table({"experiment": ["e", "e", "e", "f"], "variant": ["a", "b", "a", "a"], "item_id": ["1"] * 4,
                     "rank": pa.array([2, 1, 1, 1], pa.int32()), "neighbor_id": ["x", "y", "z", "w"],
                     "score": pa.array([0.1, 0.9, 0.5, 0.3], pa.float32())})
    lists = lists_of(rows, spec).to_pylist()
    assert [(r["experiment"], r["variant"], r["item_id"], r["ids"]) for r in lists] == \
        [("e", "a", "1", ["z", "x"]), ("e", "b", "1", ["y"]), ("f", "a", "1", ["w"])]


def test_ids_that_need_quoting_take_the_escaping_path():
    spec = BY_NAME["item_neighbors"]
    plain = lists_of(pa.table({"item_id": ["a-1"], "rank": pa.array([1], pa.int32()), "neighbor_id": ["b_2.x"],
                               "score": pa.array([0.5], pa.float32())}), spec)
    assert plain_ids(plain, spec)
    for odd in ['say "hi"', "a,b", "{x}", "NULL", "tab\there", "back\\slash", "é"]:
        table = lists_of(pa.table({"item_id": ["a"], "rank": pa.array([1], pa.int32()), "neighbor_id": [odd],
                                   "score": pa.array([np.float32(0.25)], pa.float32())}), spec)
        assert not plain_ids(table, spec)
        assert decode_json(encode_json(table, spec)[0]) == ([odd], [0.25])
