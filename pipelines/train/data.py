"""Training pairs from a listings snapshot, streamed: photos, texts and false-negative groups.

The snapshot is read as *fragments* (one Parquet row group each). Only its small columns (ids,
hashes, text fields) are held in memory; the photos are read fragment by fragment and decoded in
DataLoader workers.

The order of the pairs is a pure function of (seed, epoch, rank, world size), never of timing or
of the number of workers (:class:`StreamPlan`), so a resumed run sees exactly the batches an
uninterrupted one would have seen:

1. each epoch permutes the fragments, then shuffles rows within windows of ``window_rows``
   consecutive rows (rows from several fragments mix; memory stays bounded);
2. the epoch's sequence is cut into ``world_size`` contiguous, equal (±1) shares, one per rank —
   each training row goes to exactly one rank per epoch (no overlap, nothing left out), and a
   rank reads only the fragments its share touches;
3. each rank's stream is its shares of epoch 0, 1, 2, … back to back; batch ``k`` is rows
   ``[k*b, (k+1)*b)`` of it, so the number of steps never depends on how rows divide.

DataLoader worker ``w`` of ``n`` builds batches ``k ≡ w (mod n)``; the loader returns them in
order ``k = start, start+1, …``.
"""
from __future__ import annotations

import re
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from lookalike.errors import LookalikeError
from lookalike.siglip import Preprocess, tokenize
from lookalike.texts import TEXT_FIELDS, listing_text


def normalise_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text)).strip()


def group_ids(sha: list[str], texts: list[str] | None) -> np.ndarray:
    """Connected components of "same image_sha256 or same normalised text" (union-find);
    with ``texts`` None, of "same image_sha256" only."""
    parent = list(range(len(sha)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for keys in (sha, [normalise_text(t) for t in texts] if texts is not None else []):
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            if not key:
                continue
            if key in first:
                parent[find(i)] = find(first[key])
            else:
                first[key] = i
    return np.array([find(i) for i in range(len(sha))], dtype=np.int64)


@dataclass
class Pairs:
    item_ids: list[str]
    pixels: np.ndarray  # (N, S, S, 3) uint8
    texts: list[str]
    groups: np.ndarray  # (N,) int64



@dataclass(frozen=True)
class SnapshotTexts:
    """The snapshot's rows without their images, in file order, with the text paired to each photo."""

    item_ids: list[str]
    shas: list[str]
    texts: list[str]


@dataclass(frozen=True)
class Fragment:
    """One row group of one Parquet file: rows ``[start, start + rows)`` of the snapshot."""

    path: str
    row_group: int
    start: int
    rows: int


def snapshot_files(snapshot: Path) -> list[Path]:
    snapshot = Path(snapshot)
    files = sorted(snapshot.glob("*.parquet")) if snapshot.is_dir() else [snapshot]
    if not files:
        raise FileNotFoundError(f"no Parquet files in {snapshot}")
    return files


def fragments(snapshot: Path) -> list[Fragment]:
    out, start = [], 0
    for file in snapshot_files(snapshot):
        meta = pq.ParquetFile(file).metadata
        for rg in range(meta.num_row_groups):
            n = meta.row_group(rg).num_rows
            out.append(Fragment(str(file), rg, start, n))
            start += n
    return out


def read_texts(snapshot: Path, template: str) -> SnapshotTexts:
    """Every row's id, image hash and text, in fragment order (no image bytes are read)."""
    columns = ["item_id", "image_sha256", *TEXT_FIELDS]
    rows = [r for f in snapshot_files(snapshot) for r in pq.read_table(f, columns=columns).to_pylist()]
    return SnapshotTexts([r["item_id"] for r in rows], [r["image_sha256"] for r in rows],
                         [listing_text(template, r) for r in rows])


class ImageReader:
    """Image bytes of snapshot rows by global row index, reading whole fragments (LRU cached)."""

    def __init__(self, frags: list[Fragment], cache_fragments: int = 8):
        self.frags = frags
        self.starts = np.array([f.start for f in frags])
        self.cache: OrderedDict[int, list] = OrderedDict()
        self.cache_fragments = cache_fragments

    def _fragment(self, i: int) -> list:
        if i in self.cache:
            self.cache.move_to_end(i)
            return self.cache[i]
        f = self.frags[i]
        images = pq.ParquetFile(f.path).read_row_group(f.row_group, columns=["image"]).column(0).to_pylist()
        self.cache[i] = images
        if len(self.cache) > self.cache_fragments:
            self.cache.popitem(last=False)
        return images

    def images(self, rows: np.ndarray) -> list[bytes]:
        which = np.searchsorted(self.starts, rows, side="right") - 1
        return [self._fragment(int(f))[int(r) - self.frags[f].start] for f, r in zip(which, rows)]


class StreamPlan:
    """Which snapshot rows make batch ``k`` of a rank (see the module docstring)."""

    def __init__(self, frags: list[Fragment], train_mask: np.ndarray, *, seed: int, rank: int = 0,
                 world_size: int = 1, window_rows: int = 8192):
        self.frag_rows = [np.flatnonzero(train_mask[f.start:f.start + f.rows]) + f.start for f in frags]
        self.n = int(sum(len(r) for r in self.frag_rows))
        self.seed, self.rank, self.world_size, self.window = seed, rank, world_size, window_rows
        self.lo, self.hi = rank * self.n // world_size, (rank + 1) * self.n // world_size
        if self.n < world_size:
            raise LookalikeError(f"{self.n} training pairs cannot be shared by {world_size} ranks")
        self._epochs: OrderedDict[int, np.ndarray] = OrderedDict()

    @property
    def rows_per_epoch(self) -> int:
        """This rank's share of every epoch."""
        return self.hi - self.lo

    def epoch_rows(self, epoch: int) -> np.ndarray:
        if epoch not in self._epochs:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.frag_rows))
            rows = np.concatenate([self.frag_rows[i] for i in order])
            for s in range(0, len(rows), self.window):
                rng.shuffle(rows[s:s + self.window])
            self._epochs[epoch] = rows[self.lo:self.hi]
            if len(self._epochs) > 2:
                self._epochs.popitem(last=False)
        return self._epochs[epoch]

    def batch_rows(self, k: int, batch_size: int) -> np.ndarray:
        positions = np.arange(k * batch_size, (k + 1) * batch_size)
        epochs, offsets = np.divmod(positions, self.rows_per_epoch)
        return np.concatenate([self.epoch_rows(int(e))[offsets[epochs == e]] for e in np.unique(epochs)])


class DecodedCache:
    """Decoded pixels and token ids of every row, in shared memory, filled by whichever worker
    first decodes a row: later epochs cost no decoding. Used when the snapshot fits in
    ``budget_mb`` (the CPU default's 10k items take ~90 MB); larger snapshots are decoded on every
    visit instead. Two workers decoding the same row at once write the same bytes.
    """

    def __init__(self, rows: int, image_size: int, max_text_length: int, budget_mb: int,
                 needed: np.ndarray | None = None):
        need = rows * (image_size * image_size * 3 + max_text_length * 4 + 1)
        self.needed = torch.from_numpy(np.flatnonzero(needed)) if needed is not None else None
        self.enabled = need <= budget_mb * 2**20
        self.need_mb = need / 2**20
        if self.enabled:
            try:
                self.pixels = torch.empty((rows, image_size, image_size, 3), dtype=torch.uint8).share_memory_()
                self.ids = torch.empty((rows, max_text_length), dtype=torch.int32).share_memory_()
                self.filled = torch.zeros(rows, dtype=torch.bool).share_memory_()
            except RuntimeError:  # e.g. a container with a 64 MB /dev/shm: stream instead
                self.enabled = False

    def complete(self) -> bool:
        """Every row training will ask for is decoded (all rows if ``needed`` was not given)."""
        if not self.enabled:
            return False
        return bool(self.filled[self.needed].all() if self.needed is not None else self.filled.all())


class PairStream(torch.utils.data.IterableDataset):
    """Endless, ordered training batches of one rank, from batch ``start`` on.

    Yields dicts of tensors: ``pixels`` (b, S, S, 3) uint8 at the model's input size,
    ``input_ids`` (b, L), ``groups`` (b,) int64 (equal = same photo or same normalised title).
    """

    def __init__(self, frags: list[Fragment], texts: list[str], groups: np.ndarray, plan: StreamPlan, *,
                 batch_size: int, preprocess: Preprocess, tokenizer, max_text_length: int, start: int = 0,
                 cache: DecodedCache | None = None):
        self.frags, self.plan, self.batch_size, self.start = frags, plan, batch_size, start
        self.texts = pa.array(texts, pa.string())  # one buffer: forked workers share it without copying
        self.groups = groups
        self.preprocess, self.tokenizer, self.max_text_length = preprocess, tokenizer, max_text_length
        self.cache = cache if cache is not None and cache.enabled else None

    def _decode(self, rows: np.ndarray, reader: ImageReader) -> tuple[torch.Tensor, torch.Tensor]:
        texts = self.texts.take(pa.array(rows)).to_pylist()
        return (torch.from_numpy(self.preprocess.decode(reader.images(rows))),
                tokenize(self.tokenizer, texts, self.max_text_length))

    def batch(self, k: int, reader: ImageReader) -> dict[str, torch.Tensor]:
        rows = self.plan.batch_rows(k, self.batch_size)
        if self.cache is None:
            pixels, ids = self._decode(rows, reader)
        else:
            index = torch.from_numpy(rows)
            missing = index[~self.cache.filled[index]]
            if len(missing):
                pixels, ids = self._decode(missing.numpy(), reader)
                self.cache.pixels[missing], self.cache.ids[missing] = pixels, ids.to(torch.int32)
                self.cache.filled[missing] = True
            pixels, ids = self.cache.pixels[index], self.cache.ids[index].long()
        return {"pixels": pixels, "input_ids": ids, "groups": torch.from_numpy(self.groups[rows])}

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        reader = ImageReader(self.frags)
        k = self.start + worker
        while True:
            yield self.batch(k, reader)
            k += workers


def batch_loader(stream: PairStream, workers: int, pin_memory: bool):
    """A DataLoader over ``stream``: decoding in ``workers`` processes (0 = in this one)."""
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                                       prefetch_factor=4 if workers else None, persistent_workers=False)


def batches_from(stream: Callable[[int], PairStream], start: int, workers: int, pin_memory: bool,
                 cache: DecodedCache | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Batches ``start, start+1, …`` of a rank: decoded by ``workers`` DataLoader processes until
    the cache holds every row, then served from the cache in this process — indexing shared
    memory costs less than shipping each batch between processes, and on a 2-core machine the
    workers would compete with the model for the cores."""
    k = start
    if workers and not (cache is not None and cache.complete()):
        loader = iter(batch_loader(stream(k), workers, pin_memory))
        for batch in loader:
            yield batch
            k += 1
            if cache is not None and cache.complete():
                break
        del loader  # stops the worker processes
    source = stream(k)
    reader = ImageReader(source.frags)
    while True:
        batch = source.batch(k, reader)
        yield {name: t.pin_memory() for name, t in batch.items()} if pin_memory else batch
        k += 1


def load_rows(frags: list[Fragment], rows: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    """Decoded pixels of a few rows (the held-out set), in the order given."""
    return preprocess.decode(ImageReader(frags).images(rows)) if len(rows) else \
        np.zeros((0, preprocess.size, preprocess.size, 3), np.uint8)
