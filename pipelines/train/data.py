"""Training pairs from a listings snapshot: decoded pixels, texts, and false-negative groups."""
from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipelines.siglip import Preprocess


TEXT_FIELDS = ("title", "category", "brand", "description", "price")  # what a text template may use


def listing_text(template: str, row: dict) -> str:
    """The text paired with a listing's photo, e.g. "{title} | {category}"; missing fields are blank."""
    values = {k: ("" if row.get(k) is None else str(row.get(k))) for k in ("title", "category", "brand", "description")}
    values["price"] = "" if row.get("price") is None else f"{row['price']:.0f}"
    return template.format(**values).strip(" |")


def normalise_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text)).strip()


def group_ids(sha: list[str], texts: list[str]) -> np.ndarray:
    """Connected components of "same image_sha256 or same normalised text" (union-find)."""
    parent = list(range(len(sha)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for keys in (sha, [normalise_text(t) for t in texts]):
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            if not key:
                continue
            if key in first:
                parent[find(i)] = find(first[key])
            else:
                first[key] = i
    return np.array([find(i) for i in range(len(sha))], dtype=np.int64)


def is_validation(item_id: str, fraction: float) -> bool:
    """Stable split by item id: the same items are held out on every run."""
    h = int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:4], "big")
    return h / 2**32 < fraction


@dataclass
class Pairs:
    item_ids: list[str]
    pixels: np.ndarray  # (N, S, S, 3) uint8
    texts: list[str]
    groups: np.ndarray  # (N,) int64

    def subset(self, mask: np.ndarray) -> "Pairs":
        idx = np.flatnonzero(mask)
        return Pairs([self.item_ids[i] for i in idx], self.pixels[idx], [self.texts[i] for i in idx], self.groups[idx])


@dataclass(frozen=True)
class SnapshotTexts:
    """The snapshot's rows without their images, in file order, with the text paired to each photo."""

    item_ids: list[str]
    shas: list[str]
    texts: list[str]


def read_texts(snapshot: Path, template: str) -> SnapshotTexts:
    rows = pq.read_table(snapshot, columns=["item_id", "image_sha256", *TEXT_FIELDS]).to_pylist()
    return SnapshotTexts([r["item_id"] for r in rows], [r["image_sha256"] for r in rows],
                         [listing_text(template, r) for r in rows])


def load_pairs(snapshot: Path, preprocess: Preprocess, texts: SnapshotTexts) -> Pairs:
    """Decode the snapshot's images (same file order as ``texts``) into training pairs."""
    images = pq.read_table(snapshot, columns=["image"]).column("image").to_pylist()
    return Pairs(texts.item_ids, preprocess.decode(images), texts.texts, group_ids(texts.shas, texts.texts))
