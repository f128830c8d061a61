"""The two systems the fine-tuned model must beat.

- ``image_baseline``: hand-made image features with no learning — an RGB colour histogram
  (4x4x4 bins) and the image downsampled to 8x8 pixels, standardised and reduced by PCA, as the
  Similar Looks paper's baseline reduces its MobileNet embedding to 128-d. Fitted once, it is
  also a system the nightly run can serve (pipelines/serving.py).
- ``text_baseline``: TF-IDF over titles (word unigrams and bigrams), cosine similarity.
"""
from __future__ import annotations

import numpy as np

from pipelines.embed.compression import Projection


def colour_histogram(pixels: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) uint8 → (N, 64) square roots of the shares of pixels in 4x4x4 RGB bins."""
    n, s = pixels.shape[0], pixels.shape[1]
    bins = (pixels // 64).astype(np.int64)  # 4 levels per channel
    codes = bins[..., 0] * 16 + bins[..., 1] * 4 + bins[..., 2]
    hist = np.zeros((n, 64), dtype=np.float32)
    for i in range(n):
        hist[i] = np.bincount(codes[i].ravel(), minlength=64)
    return np.sqrt(hist / (s * s))


def image_features(pixels: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) uint8 → (N, 64 + 192) colour histogram + 8x8 thumbnail features."""
    n, s = pixels.shape[0], pixels.shape[1]
    step = s // 8
    thumb = pixels[:, : step * 8, : step * 8].reshape(n, 8, step, 8, step, 3).mean(axis=(2, 4)) / 255.0
    return np.concatenate([colour_histogram(pixels), thumb.reshape(n, -1).astype(np.float32)], axis=1)


def fit_baseline(pixels: np.ndarray, dim: int) -> Projection:
    """Standardise the hand-made features of (N, S, S, 3) photos and keep ``dim`` principal
    components, folded into one linear map: ((x − μ) / σ) · Vᵀ = (x − μ) · (V / σ)ᵀ."""
    feats = image_features(pixels).astype(np.float64)
    mean, scale = feats.mean(axis=0), feats.std(axis=0)
    scale[scale < 1e-6] = 1.0  # a constant feature: left as it is, not blown up
    _, _, vt = np.linalg.svd((feats - mean) / scale, full_matrices=False)
    dim = min(dim, vt.shape[0])
    return Projection(mean.astype(np.float32), (vt[:dim] / scale).astype(np.float32))


def baseline_vectors(projection: Projection, pixels: np.ndarray) -> np.ndarray:
    return projection.apply(image_features(pixels))


def image_baseline_vectors(pixels: np.ndarray, dim: int) -> np.ndarray:
    """Fitted on ``pixels`` and applied to them: the baseline of a one-off comparison."""
    return baseline_vectors(fit_baseline(pixels, dim), pixels)


def text_baseline_vectors(titles: list[str]) -> np.ndarray:
    """(N, V) sparse L2-normalised TF-IDF rows; dot products are cosine similarities."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, token_pattern=r"(?u)\b\w+\b")
    return vec.fit_transform([t or "" for t in titles])
