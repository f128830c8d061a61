"""Interaction sequences for the user model: the log → one ordered item sequence per user.

- events kept: view, click, purchase (impressions are what the site showed, not what the user did);
- items kept: those with a photo in the ds's snapshot or catalogue (the item tower needs both
  modalities); others are dropped from the sequences;
- consecutive events on one item collapse into one step carrying the strongest event
  (purchase > click > view), so "click then view of the same item" is one step;
- leave-last-out: for users with at least two steps the last one is the held-out target and the
  rest is their training sequence; users with one step only train (as history).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

EVENT_TYPES = {"view": 1, "click": 2, "purchase": 3}  # 0 is padding


@dataclass
class Sequences:
    users: list[str]  # every active user (at least one event in the window), sorted
    items: list[np.ndarray]  # per user: item indices, oldest first (may be empty)
    events: list[np.ndarray]  # per user: event type ids aligned with items
    sessions: list[np.ndarray]  # per user: session number of each step
    purchased: list[set[int]]  # per user: item indices bought (never recommended again)

    def leave_last_out(self) -> tuple["Sequences", np.ndarray, np.ndarray]:
        """(training sequences, evaluated user positions, their held-out item)."""
        evaluated = np.array([u for u, seq in enumerate(self.items) if len(seq) >= 2], dtype=np.int64)
        targets = np.array([self.items[u][-1] for u in evaluated], dtype=np.int64)
        cut = set(evaluated.tolist())
        train = Sequences(self.users,
                          [s[:-1] if u in cut else s for u, s in enumerate(self.items)],
                          [s[:-1] if u in cut else s for u, s in enumerate(self.events)],
                          [s[:-1] if u in cut else s for u, s in enumerate(self.sessions)],
                          self.purchased)
        return train, evaluated, targets


def build_sequences(events: pa.Table, index: dict[str, int]) -> Sequences:
    """Per-user sequences over the item indices of ``index`` (see the module docstring)."""
    users = sorted(set(events.column("user_id").to_pylist()) - {None})
    kept = events.filter(pc.is_in(events.column("event"), pa.array(list(EVENT_TYPES))))
    data = kept.select(["user_id", "session_id", "event", "item_id", "ts"]).to_pydict()
    order = sorted(range(len(data["ts"])), key=lambda i: (data["user_id"][i], data["ts"][i]))
    per_user: dict[str, list[tuple[int, int, str]]] = {}
    for i in order:
        item = index.get(data["item_id"][i])
        if item is None or data["user_id"][i] is None:
            continue
        per_user.setdefault(data["user_id"][i], []).append((item, EVENT_TYPES[data["event"][i]], data["session_id"][i]))
    items, types, sessions, purchased = [], [], [], []
    for user in users:
        steps: list[list] = []
        session_numbers: dict[str, int] = {}
        for item, event, session in per_user.get(user, []):
            number = session_numbers.setdefault(session, len(session_numbers))
            if steps and steps[-1][0] == item:
                steps[-1][1] = max(steps[-1][1], event)
            else:
                steps.append([item, event, number])
        items.append(np.array([s[0] for s in steps], dtype=np.int64))
        types.append(np.array([s[1] for s in steps], dtype=np.int64))
        sessions.append(np.array([s[2] for s in steps], dtype=np.int64))
        purchased.append({s[0] for s in steps if s[1] == EVENT_TYPES["purchase"]})
    return Sequences(users, items, types, sessions, purchased)


def training_windows(seqs: Sequences, max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Next-item training examples: windows of ``max_len`` + 1 steps cut from every sequence.

    Returns (items, events, targets), each (W, max_len), right-padded with -1 (items, targets)
    and 0 (events): position t's input is steps ..t and its target is step t + 1.
    """
    rows_items, rows_events, rows_targets = [], [], []
    for items, events in zip(seqs.items, seqs.events):
        if len(items) < 2:
            continue
        for end in range(len(items), 1, -max_len):  # the newest window first, then older ones
            start = max(0, end - max_len - 1)
            rows_items.append(items[start:end - 1])
            rows_events.append(events[start:end - 1])
            rows_targets.append(items[start + 1:end])
            if start == 0:
                break
    n = len(rows_items)
    out_items = np.full((n, max_len), -1, dtype=np.int64)
    out_events = np.zeros((n, max_len), dtype=np.int64)
    out_targets = np.full((n, max_len), -1, dtype=np.int64)
    for r, (a, e, t) in enumerate(zip(rows_items, rows_events, rows_targets)):
        out_items[r, :len(a)], out_events[r, :len(e)], out_targets[r, :len(t)] = a, e, t
    return out_items, out_events, out_targets


def history_batch(seqs: Sequences, users: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The last ``max_len`` steps of each user in ``users``, right-padded: (items, events)."""
    items = np.full((len(users), max_len), -1, dtype=np.int64)
    events = np.zeros((len(users), max_len), dtype=np.int64)
    for r, u in enumerate(users):
        tail_items, tail_events = seqs.items[u][-max_len:], seqs.events[u][-max_len:]
        items[r, :len(tail_items)], events[r, :len(tail_events)] = tail_items, tail_events
    return items, events


def co_interacted_pairs(seqs: Sequences) -> np.ndarray:
    """(P, 2) pairs of different items that follow each other within one session."""
    pairs = set()
    for items, sessions in zip(seqs.items, seqs.sessions):
        for a, b, sa, sb in zip(items[:-1], items[1:], sessions[:-1], sessions[1:]):
            if sa == sb and a != b:
                pairs.add((int(a), int(b)))
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)


def item_prompt(title, category, brand, price) -> str:
    """The item's text for the text tower: PixRec's prompt of the listing's fields.

    The short fields come first and the title last: the text tower reads only its
    ``max_text_length`` tokens (24 for the from-scratch models, 64 for siglip-base), and a
    title-first prompt loses the category to truncation (on the sample marketplace its text
    neighbours then shared the category 19% of the time instead of 94%).
    """
    parts = [f"Category: {category or ''}"]
    if brand:
        parts.append(f"Brand: {brand}")
    if price is not None:
        parts.append(f"Price: {price:.0f}")
    parts.append(f"Title: {title or ''}")
    return " ".join(parts)
