"""The lists a site reads, made from the published tables: one row per key (an item, an experiment
arm's item, a user) holding its ordered member ids and scores. Pure Arrow and numpy: no store here.

``lists_of`` turns ``item_neighbors``' (item, rank) rows into (item, [neighbour ids], [scores]) rows
in rank order; ``encode_json`` renders each list as the compact JSON value Redis holds
(``[["id1","id2",…],[0.93,0.91,…]]``, scores as the shortest text that reads back to the same
float32); ``same_list`` is the check a hand-off runs on a sample before it switches.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lookalike import tables

ITEMS, USERS = "items", "users"  # the feeds: what one DAG's publish hands off together


@dataclass(frozen=True)
class ListTable:
    """A published table as the online store holds it."""
    name: str  # the published table
    feed: str  # the feed it goes live with: items (lookalike_nightly) or users (lookalike_user_recs)
    keys: tuple[str, ...]  # what one list is of
    member: str  # the ranked column

    def field(self, key: tuple) -> str:
        """The key as one string (Redis' hash field): the parts joined by ':' (experiment and variant
        names hold no ':', so the item id, last, may)."""
        return ":".join(key)


LIST_TABLES = tuple(ListTable(t.name, t.feed, t.keys[:-1], t.member) for t in tables.TABLES if t.feed)
BY_NAME = {t.name: t for t in LIST_TABLES}
LIST_SCHEMA_TAIL = [pa.field("ids", pa.list_(pa.string())), pa.field("scores", pa.list_(pa.float32()))]


def feed_tables(feed: str, names: tuple[str, ...]) -> tuple[ListTable, ...]:
    """The tables of ``feed`` among the configured ``names``, in their fixed order."""
    return tuple(t for t in LIST_TABLES if t.feed == feed and t.name in names)


def empty_lists(spec: ListTable) -> pa.Table:
    return pa.table({**{k: pa.array([], pa.string()) for k in spec.keys},
                     "ids": pa.array([], pa.list_(pa.string())), "scores": pa.array([], pa.list_(pa.float32()))})


def lists_of(rows: pa.Table, spec: ListTable) -> pa.Table:
    """One row per key with its members and scores in rank order: (keys…, ids, scores).

    The rows are grouped with integer codes (``dictionary_encode``) and one ``np.lexsort``, not a
    string sort; the result is ordered by key."""
    n = rows.num_rows
    if n == 0:
        return empty_lists(spec)
    codes = []
    for key in spec.keys:
        encoded = pc.dictionary_encode(rows.column(key).combine_chunks())
        # dictionary order is first appearance: rank the dictionary so the codes sort like the strings
        by_text = pc.array_sort_indices(encoded.dictionary).to_numpy()
        position = np.empty_like(by_text)
        position[by_text] = np.arange(len(by_text))
        codes.append(position[encoded.indices.to_numpy()])
    rank = rows.column("rank").to_numpy()
    order = np.lexsort((rank, *reversed(codes)))  # last key is the primary sort key of lexsort
    same = np.ones(n - 1, dtype=bool)  # row i+1 continues row i's list
    for code in codes:
        sorted_code = code[order]
        same &= sorted_code[1:] == sorted_code[:-1]
    starts = np.flatnonzero(np.concatenate([[True], ~same]))
    offsets = pa.array(np.append(starts, n).astype(np.int32))
    taken = pa.array(order)
    members = rows.column(spec.member).combine_chunks().take(taken)
    scores = rows.column("score").combine_chunks().cast(pa.float32()).take(taken)
    first = pa.array(order[starts])
    return pa.table({**{k: rows.column(k).combine_chunks().take(first) for k in spec.keys},
                     "ids": pa.ListArray.from_arrays(offsets, members),
                     "scores": pa.ListArray.from_arrays(offsets, scores)})


_PLAIN_ID = re.compile(r"^[A-Za-z0-9_.:/@+-]+$")


def plain_ids(lists: pa.Table, spec: ListTable) -> bool:
    """Whether every key and member id needs no quoting in JSON or in PostgreSQL's COPY text and array
    syntax: letters, digits and ``_.:/@+-``, never the word NULL. The fast writers take these;
    anything else goes through the libraries' own escaping, row by row."""
    columns = [lists.column(k) for k in spec.keys] + [pc.list_flatten(lists.column("ids"))]
    for column in columns:
        if len(column) == 0:
            continue
        if not pc.all(pc.match_substring_regex(column, _PLAIN_ID.pattern)).as_py():
            return False
        if pc.any(pc.equal(pc.utf8_lower(column), "null")).as_py():
            return False
    return True


def list_text(lists: pa.Table, *, ids: tuple[str, str, str], scores: tuple[str, str, str], between: str,
              quote: str = "") -> pa.Array:
    """Each list as one string, by Arrow's string kernels (not row by row): its ids, each in ``quote``,
    joined as ``ids`` = (before, separator, after), then ``between``, then its scores (float32 as the
    shortest text) as ``scores``. The JSON Redis holds, PostgreSQL's COPY text and the hours' list
    signatures are each one call of this."""
    id_lists = lists.column("ids")
    inner = pc.binary_join(id_lists, quote + ids[1] + quote)
    if quote:  # an empty list has no quotes either
        inner = pc.if_else(pc.equal(pc.list_value_length(id_lists), 0), "",
                           pc.binary_join_element_wise(quote, inner, quote, ""))
    id_text = pc.binary_join_element_wise(ids[0], inner, ids[2], "")
    score_text = pc.binary_join_element_wise(
        scores[0], pc.binary_join(pc.cast(lists.column("scores"), pa.list_(pa.string())), scores[1]), scores[2], "")
    return pc.binary_join_element_wise(id_text, score_text, between)


def encode_json(lists: pa.Table, spec: ListTable) -> list[str]:
    """Each list's JSON value, ``[[ids…],[scores…]]``, in the table's row order."""
    if plain_ids(lists, spec):
        return list_text(lists, ids=("[[", ",", "]"), scores=("[", ",", "]]"), between=",", quote='"').to_pylist()
    return [f'[{json.dumps(ids, separators=(",", ":"))},[{",".join(str(np.float32(s)) for s in scores)}]]'
            for ids, scores in zip(lists.column("ids").to_pylist(), lists.column("scores").to_pylist())]


def decode_json(value: str | bytes) -> tuple[list[str], list[float]]:
    ids, scores = json.loads(value)
    return ids, scores


def same_list(expected: tuple[list[str], list[float]], found: tuple[list[str], list[float]] | None) -> bool:
    """Same ids in the same order, and scores equal as float32 (what the table holds)."""
    if found is None:
        return False
    ids, scores = found
    return list(ids) == list(expected[0]) and np.array_equal(np.asarray(scores, dtype=np.float32),
                                                             np.asarray(expected[1], dtype=np.float32))


def sample_rows(lists: pa.Table, count: int, seed: int) -> pa.Table:
    """``count`` lists chosen at random (all of them when there are fewer)."""
    if lists.num_rows <= count:
        return lists
    picked = np.sort(np.random.default_rng(seed).choice(lists.num_rows, size=count, replace=False))
    return lists.take(pa.array(picked))
