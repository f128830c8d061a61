"""Interaction log → sequences: kept events, collapsed steps, leave-last-out, training windows."""
import numpy as np
import pyarrow as pa

from lookalike.userrec.data import build_sequences, co_interacted_pairs, history_batch, item_prompt, training_windows


def _events(rows):
    names = ["user_id", "session_id", "event", "item_id", "source_item_id", "ts"]
    return pa.table({name: [r[i] for r in rows] for i, name in enumerate(names)})


def test_sequences_keep_actions_collapse_repeats_and_hold_out_the_last_step():
    index = {"a": 0, "b": 1, "c": 2}
    seqs = build_sequences(_events([
        ("u1", "s1", "view", "a", None, "2026-01-01T10:00:00"),
        ("u1", "s1", "impression", "b", "a", "2026-01-01T10:00:00"),  # shown, not done: dropped
        ("u1", "s1", "click", "b", "a", "2026-01-01T10:00:05"),
        ("u1", "s1", "view", "b", None, "2026-01-01T10:00:06"),  # same item again: one step, strongest event
        ("u1", "s2", "purchase", "c", None, "2026-01-02T09:00:00"),
        ("u1", "s2", "view", "gone", None, "2026-01-02T09:01:00"),  # no photo this ds: dropped
        ("u2", "s3", "view", "gone", None, "2026-01-01T08:00:00"),  # active, but nothing usable
        ("u3", "s4", "view", "c", None, "2026-01-03T08:00:00"),
    ]), index)
    assert seqs.users == ["u1", "u2", "u3"]
    assert seqs.items[0].tolist() == [0, 1, 2] and seqs.events[0].tolist() == [1, 2, 3]
    assert seqs.items[1].tolist() == [] and seqs.purchased[0] == {2}
    train, evaluated, targets = seqs.leave_last_out()
    assert evaluated.tolist() == [0] and targets.tolist() == [2]
    assert train.items[0].tolist() == [0, 1] and train.items[2].tolist() == [2]
    assert co_interacted_pairs(seqs).tolist() == [[0, 1]]  # b → c crosses sessions


def test_training_windows_pair_every_step_with_the_next_and_cover_long_sequences():
    seqs = build_sequences(_events([("u", "s", "view", f"i{n}", None, f"2026-01-01T10:{n:02d}:00") for n in range(7)]),
                           {f"i{n}": n for n in range(7)})
    items, events, targets = training_windows(seqs, max_len=4)
    assert items.tolist() == [[2, 3, 4, 5], [0, 1, -1, -1]]
    assert targets.tolist() == [[3, 4, 5, 6], [1, 2, -1, -1]]
    assert (events[0] == 1).all() and events[1].tolist() == [1, 1, 0, 0]
    recent, _ = history_batch(seqs, np.array([0]), max_len=4)
    assert recent.tolist() == [[3, 4, 5, 6]]


def test_the_item_prompt_names_every_field_it_has_short_fields_first():
    assert item_prompt("Kumo tee M", "t-shirt", "Kumo", 1999.0) == "Category: t-shirt Brand: Kumo Price: 1999 Title: Kumo tee M"
    assert item_prompt("vase", "vase", None, None) == "Category: vase Title: vase"
