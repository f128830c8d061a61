"""The image baseline, the system the fine-tuned model must beat: hand-made image features with no
learning, chosen by measurement on real product photos (``benchmarks/baseline_features.py``,
docs/benchmarks.md):

  - *colour*: an 8x8x8 RGB histogram of the photo's foreground (the pixels that differ from its
    corner colour, a product photo's background, by more than ``FOREGROUND``), the square roots of
    the shares (Hellinger), L2-normalised;
  - *shape*: a 16x16 luminance thumbnail of the photo at its own aspect ratio (padded with its
    background, not stretched), its mean removed, L2-normalised;
  - *outline*: a histogram of oriented gradients, ``HOG_CELLS`` x ``HOG_CELLS`` cells of 9
    orientations weighted by gradient magnitude (square roots, L2-normalised): where the garment's
    edges run, which a thumbnail blurs and a colour histogram never sees;

  concatenated with weights √``WEIGHTS``, so that the cosine is the weighted sum of the three
  cosines, then reduced by PCA (centred, not whitened: every feature keeps its own scale, so no
  rare histogram bin is blown up) to ``evaluate.baseline_dim``. Fitted once, it is also a system the nightly run can serve
  (pipelines/serving.py), and the evaluation scores the same code on the same decoding
  (``preprocess``).
"""
from __future__ import annotations

import numpy as np

from lookalike.projection import Projection, fit_projection

FEATURES = "fg-hist8+grey16+hog8/w0.35,0.25,0.4"  # recorded with a fitted baseline: another set is fitted anew
SIZE = 64  # px, the aspect ratio kept: how the baseline decodes a photo (``preprocess``)
HIST_BINS = 8  # per RGB channel
FOREGROUND = 40  # sum of |ΔR| + |ΔG| + |ΔB| from the corner colour above which a pixel is the product's
THUMB = 16  # side of the luminance thumbnail
HOG_CELLS, HOG_BINS = 8, 9  # the gradient histogram's cells per side and orientations
WEIGHTS = (0.35, 0.25, 0.4)  # the colour histogram's, the thumbnail's and the gradients' shares of the cosine
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def preprocess():
    """The baseline's decoding: ``SIZE`` px square, the photo padded with its background, not stretched."""
    from lookalike.siglip import Preprocess  # torch, only when photos are decoded

    return Preprocess(SIZE, pad=True)


def colour_histogram(pixels: np.ndarray, bins: int = HIST_BINS, foreground: float | None = FOREGROUND,
                     chunk: int = 512) -> np.ndarray:
    """(N, S, S, 3) uint8 → (N, bins³) L2-normalised square roots of the shares of the photo's pixels in
    each RGB bin; with ``foreground``, the pixels near the corner colour (the background) count a
    thousandth as much (a photo that is all background keeps its histogram). ``chunk`` photos at a
    time, so that fitting on thousands of photos holds a chunk's integers, not all of theirs."""
    out = np.empty((len(pixels), bins ** 3), np.float32)
    for start in range(0, len(pixels), chunk):
        block = pixels[start:start + chunk]
        n = len(block)
        levels = (block.astype(np.int32) * bins) >> 8
        codes = ((levels[..., 0] * bins + levels[..., 1]) * bins + levels[..., 2]).reshape(n, -1)
        weights = np.ones(codes.shape, np.float64)
        if foreground is not None:
            corner = block[:, :1, :1, :].astype(np.int16)
            away = np.abs(block.astype(np.int16) - corner).sum(axis=-1).reshape(n, -1)
            weights = np.where(away > foreground, 1.0, 1e-3)
        flat = (codes + np.arange(n)[:, None] * bins ** 3).ravel()  # one bincount for the chunk's photos
        hist = np.bincount(flat, weights=weights.ravel(), minlength=n * bins ** 3).reshape(n, -1)
        out[start:start + n] = _unit(np.sqrt(hist / hist.sum(axis=1, keepdims=True)))
    return out


def grey_thumbnail(pixels: np.ndarray, side: int = THUMB, chunk: int = 512) -> np.ndarray:
    """(N, S, S, 3) uint8 → (N, side²) the luminance averaged over side x side cells, less its mean,
    L2-normalised (a flat photo stays a zero vector); ``chunk`` photos at a time."""
    n, s = pixels.shape[0], pixels.shape[1]
    step = s // side
    out = np.empty((n, side * side), np.float32)
    for start in range(0, n, chunk):
        block = pixels[start:start + chunk, :step * side, :step * side]
        grey = block.astype(np.float32) @ LUMA
        thumb = grey.reshape(len(block), side, step, side, step).mean(axis=(2, 4)).reshape(len(block), -1) / 255.0
        out[start:start + len(block)] = _unit(thumb - thumb.mean(axis=1, keepdims=True))
    return out


def gradient_histogram(pixels: np.ndarray, cells: int = HOG_CELLS, bins: int = HOG_BINS,
                       chunk: int = 512) -> np.ndarray:
    """(N, S, S, 3) uint8 → (N, cells² · bins): per cell of a cells x cells grid, the luminance
    gradients' magnitudes summed by unsigned orientation (``bins`` over 180°), square-rooted and
    L2-normalised over the photo (a flat photo stays a zero vector); ``chunk`` photos at a time."""
    n, s = pixels.shape[0], pixels.shape[1]
    cell = np.minimum(np.arange(s) // max(1, s // cells), cells - 1)
    where = (cell[:, None] * cells + cell[None, :])[None] * bins  # each pixel's cell, times the orientations
    out = np.empty((n, cells * cells * bins), np.float32)
    for start in range(0, n, chunk):
        grey = pixels[start:start + chunk].astype(np.float32) @ LUMA
        m = len(grey)
        dx, dy = np.zeros_like(grey), np.zeros_like(grey)
        dx[:, :, 1:-1] = grey[:, :, 2:] - grey[:, :, :-2]
        dy[:, 1:-1, :] = grey[:, 2:, :] - grey[:, :-2, :]
        angle = np.mod(np.arctan2(dy, dx), np.pi)
        orientation = np.minimum((angle * (bins / np.pi)).astype(np.int64), bins - 1)
        codes = (where + orientation + np.arange(m)[:, None, None] * cells * cells * bins).ravel()
        hist = np.bincount(codes, weights=np.hypot(dx, dy).ravel(), minlength=m * cells * cells * bins)
        out[start:start + m] = _unit(np.sqrt(hist.reshape(m, -1)))
    return out


def image_features(pixels: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) uint8 (decoded by ``preprocess``) → (N, 8³ + 16² + 8² · 9): the weighted colour,
    shape and outline features, whose dot products are the blended cosine."""
    colour, shape, outline = WEIGHTS
    return np.concatenate([np.sqrt(colour) * colour_histogram(pixels), np.sqrt(shape) * grey_thumbnail(pixels),
                           np.sqrt(outline) * gradient_histogram(pixels)], axis=1).astype(np.float32)


def fit_baseline(pixels: np.ndarray, dim: int) -> Projection:
    """The PCA of the features of (N, S, S, 3) photos, ``dim`` components (fewer with fewer photos)."""
    feats = image_features(pixels)
    return fit_projection(feats, min(dim, len(feats) - 1, feats.shape[1] - 1))


def baseline_vectors(projection: Projection, pixels: np.ndarray) -> np.ndarray:
    return projection.apply(image_features(pixels))


def image_baseline_vectors(pixels: np.ndarray, dim: int) -> np.ndarray:
    """Fitted on ``pixels`` and applied to them: the baseline of a one-off comparison."""
    return baseline_vectors(fit_baseline(pixels, dim), pixels)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)
