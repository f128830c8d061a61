"""Stable keys of item ids: the same on every run and every host, so the items held out from
training and the evaluation's sample never move (standard library only)."""
from __future__ import annotations

import hashlib


def id_hash(item_id: str) -> bytes:
    """A stable pseudo-random key of an item id: the same on every run and every host."""
    return hashlib.sha256(item_id.encode()).digest()


def is_validation(item_id: str, fraction: float) -> bool:
    """Stable split by item id: the same items are held out on every run."""
    h = int.from_bytes(id_hash(item_id)[:4], "big")
    return h / 2**32 < fraction
