"""Optional embedding compression: a PCA projection and float16 storage.

The PCA is fitted once per model version on a sample of catalogue embeddings and stored beside
the model (``pca-<dim>.npz``), so every night, executor and rerun projects into the same space.
Projected vectors are re-normalised (cosine similarity stays an inner product) and carry the
model version ``<version>+pca<dim>``, so incremental reuse never mixes spaces.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lookalike.atomic import atomic_write_bytes
from lookalike.errors import ConfigError, LookalikeError


@dataclass(frozen=True)
class Projection:
    mean: np.ndarray  # (D,)
    components: np.ndarray  # (d, D), rows orthonormal

    @property
    def dim(self) -> int:
        return self.components.shape[0]

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """(N, D) → (N, d) L2-normalised."""
        out = (vectors - self.mean) @ self.components.T
        return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def fit_projection(vectors: np.ndarray, dim: int) -> Projection:
    """PCA of (N, D) ``vectors`` keeping ``dim`` components (SVD of the centred sample)."""
    if dim >= vectors.shape[1]:
        raise ConfigError(f"embed.pca_dim={dim} must be smaller than the model's embedding size {vectors.shape[1]}")
    if len(vectors) < dim:
        raise LookalikeError(f"PCA to {dim} dimensions needs at least {dim} sample vectors, got {len(vectors)}")
    mean = vectors.mean(axis=0)
    _, _, vt = np.linalg.svd(vectors - mean, full_matrices=False)
    return Projection(mean.astype(np.float32), vt[:dim].astype(np.float32))


def projection_path(model_dir: str | Path, dim: int) -> Path:
    return Path(model_dir) / f"pca-{dim}.npz"


def save_projection(projection: Projection, path: Path) -> None:
    buf = io.BytesIO()
    np.savez(buf, mean=projection.mean, components=projection.components)
    atomic_write_bytes(path, buf.getvalue())  # the model folder gains the file complete or not at all


def load_projection(path: str | Path) -> Projection:
    with np.load(path) as data:
        return Projection(data["mean"], data["components"])


def to_float16(vectors: np.ndarray) -> np.ndarray:
    """Storage rounding: half the bytes; unit norms stay within ~1e-3."""
    return vectors.astype(np.float16)
