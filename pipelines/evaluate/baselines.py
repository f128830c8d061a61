"""The text baseline the evaluation also scores: TF-IDF over titles (word unigrams and bigrams),
cosine similarity. The image baseline, which serving uses too, is ``lookalike.features``."""
from __future__ import annotations

import numpy as np


def text_baseline_vectors(titles: list[str]) -> np.ndarray:
    """(N, V) sparse L2-normalised TF-IDF rows; dot products are cosine similarities."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, token_pattern=r"(?u)\b\w+\b")
    return vec.fit_transform([t or "" for t in titles])
