"""What the nightly run serves, and how a served system turns photos into vectors.

Three kinds of system live in the model store, each a folder whose ``lookalike.json`` names
its kind:

- a SigLIP version, ``<models>/siglip/<version>/`` (``lookalike train``);
- the image baseline, ``<models>/image-baseline/<version>/``: the hand-made features of
  ``features.py`` with their PCA fitted once, on a sample of the catalogue of the first
  ds that needed it, so every night projects into the same space and its embeddings are reused
  like a model's (fitted again when the features change: ``features.FEATURES``);
- a hybrid, ``<models>/hybrid/<version>/``: a SigLIP version's unit vector scaled by √w beside
  the baseline's scaled by √(1 − w), so that cosine = w · model + (1 − w) · baseline. The
  evaluation chooses w on its log (``evaluate.hybrid_weights``) and promotes the model with it.
  The model's part may read the item's title too (``text_weight`` t > 0, ``embed.text_weights``):
  unit((1 − t) · photo + t · text), both from the same SigLIP, the text as the model was trained
  to read it (its ``train.text_template``: title and category by default). A listing without a
  title keeps its photo's vector. A hybrid with w = 1 and t > 0 is the *multimodal* system.

The rule (:func:`resolve`): the production model, as the hybrid it was promoted as when its
weight is below 1 or its text weight above 0; with none promoted (or the production model
retired because a system beat it), the image baseline. A candidate that was not promoted is
never served.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lookalike import registry
from lookalike.atomic import atomic_path, atomic_write_text
from lookalike.config import Config
from lookalike.projection import Projection, load_projection, save_projection
from lookalike.errors import LookalikeError
from lookalike import features
from lookalike.features import baseline_vectors, fit_baseline
from lookalike.storage import ModelStore, Warehouse
from lookalike.systems import HYBRID, IMAGE_BASELINE, SIGLIP
from lookalike.texts import TEXT_FIELDS, listing_text

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Served:
    system: str  # siglip | image_baseline | hybrid, or given (a model passed by hand, not the rule)
    version: str  # the model_version of its item_embeddings rows
    path: str  # the folder load_embedder reads
    why: str

    def to_dict(self) -> dict:
        return {"system": self.system, "version": self.version, "why": self.why}


# ----------------------------------------------------------------------------- the image baseline

def ensure_baseline(cfg: Config, ds: str) -> tuple[str, Path]:
    """(version, folder) of the fitted image baseline; fitted on the ds's catalogue the first time."""
    store = ModelStore.at(cfg.models)
    current = registry.baseline(store)
    if current and (store.baseline_dir(current) / "projection.npz").exists():
        fitted = _features_of(store.baseline_dir(current))
        if fitted == features.FEATURES:
            return current, store.baseline_dir(current)
        log.info("image baseline %s was fitted with the features %s; fitting the current ones (%s)", current,
                 fitted, features.FEATURES)
    import pyarrow.dataset as pads

    catalog = Warehouse.of(cfg).work(ds, "catalog")
    if not catalog.exists():
        raise FileNotFoundError(f"no catalogue for ds={ds} at {catalog}: run `lookalike extract --ds {ds}` first")
    dataset = pads.dataset(catalog)
    rows = dataset.count_rows()
    picked = np.sort(np.random.default_rng(0).permutation(rows)[: cfg.embed.pca_sample])
    images = dataset.take(picked, columns=["image"]).column("image").to_pylist()
    decode = features.preprocess().decode
    pixels = []
    for data in images:
        try:
            pixels.append(decode([data])[0])
        except Exception:  # a photo that does not decode is quarantined by embed; the fit skips it
            continue
    projection = fit_baseline(np.stack(pixels), cfg.evaluate.baseline_dim)
    digest = hashlib.sha256(projection.mean.tobytes() + projection.components.tobytes()).hexdigest()
    digest = hashlib.sha256(features.FEATURES.encode() + digest.encode()).hexdigest()
    version = f"image-baseline-{ds.replace('-', '')}-{digest[:10]}"
    folder = store.baseline_dir(version)
    with atomic_path(folder, first_wins=True) as staging:  # a concurrent run fits the same result
        staging.mkdir()
        save_projection(projection, staging / "projection.npz")
        (staging / "lookalike.json").write_text(json.dumps(
            {"kind": IMAGE_BASELINE, "version": version, "ds": ds, "fitted_on": len(pixels), "dim": projection.dim,
             "image_size": features.SIZE, "features": features.FEATURES}, indent=2))
    registry.set_baseline(store, version)
    log.info("image baseline %s: fitted on %d catalogue photos of %s (%d dimensions)", version, len(pixels), ds,
             projection.dim)
    return version, folder


def _features_of(folder: Path) -> str:
    """The feature set a fitted baseline folder was fitted with (its ``lookalike.json``)."""
    meta = folder / "lookalike.json"
    return json.loads(meta.read_text()).get("features", "hist4+rgb8/standardised") if meta.exists() else "unknown"


# ----------------------------------------------------------------------------- hybrids

def hybrid_version(model_version: str, baseline_version: str | None, weight: float, text_weight: float = 0.0) -> str:
    """The version of the model at photo/title weight ``text_weight`` blended with the baseline at
    ``weight`` on the model (w = 1: no baseline, the multimodal system)."""
    text = f"-t{round(text_weight * 100):02d}" if text_weight > 0 else ""
    if weight >= 1.0:
        return f"multimodal-{model_version}{text}"
    return f"hybrid-{model_version}-{baseline_version.removeprefix('image-baseline-')}-w{round(weight * 100):02d}{text}"


def ensure_hybrid(store: ModelStore, model_version: str, baseline_version: str | None, weight: float,
                  text_weight: float = 0.0) -> tuple[str, Path]:
    version = hybrid_version(model_version, baseline_version, weight, text_weight)
    folder = store.hybrid_dir(version)
    if not (folder / "lookalike.json").exists():
        spec = {"kind": HYBRID, "version": version, "model": model_version,
                "baseline": baseline_version if weight < 1.0 else None, "weight": weight, "text_weight": text_weight}
        atomic_write_text(folder / "lookalike.json", json.dumps(spec, indent=2))
    return version, folder


def combine(model_vectors: np.ndarray, baseline: np.ndarray, weight: float) -> np.ndarray:
    """[√w · model, √(1 − w) · baseline] of unit rows: unit rows whose dot products blend the two cosines."""
    return np.concatenate([np.sqrt(weight) * model_vectors, np.sqrt(1.0 - weight) * baseline],
                          axis=1).astype(np.float32)


def with_text(photo: np.ndarray, text: np.ndarray, has_text: np.ndarray, text_weight: float) -> np.ndarray:
    """unit((1 − t) · photo + t · text) of unit rows; a row without text (``has_text`` False) keeps its photo's."""
    mixed = (1.0 - text_weight) * photo + text_weight * text
    mixed /= np.maximum(np.linalg.norm(mixed, axis=1, keepdims=True), 1e-12)
    return np.where(np.asarray(has_text, bool)[:, None], mixed, photo).astype(np.float32)


def text_weight_of(path: str | Path) -> float:
    """The share of the title in a served folder's vectors (0: photos alone)."""
    meta = Path(path) / "lookalike.json"
    if "://" in str(path) or not meta.exists():
        return 0.0
    spec = json.loads(meta.read_text())
    return float(spec.get("text_weight", 0.0)) if spec.get("kind") == HYBRID else 0.0


def served_template(path: str | Path) -> str | None:
    """The text template of a served folder that reads titles (``item_text``); None for photos alone."""
    if text_weight_of(path) <= 0:
        return None
    spec = json.loads((Path(path) / "lookalike.json").read_text())
    return text_template(Path(path).parents[1] / SIGLIP / spec["model"])


def text_template(model_dir: str | Path) -> str:
    """How a SigLIP version reads a listing (its training's ``train.text_template``; the title alone
    for a checkpoint trained elsewhere)."""
    meta = Path(model_dir) / "lookalike.json"
    config = json.loads(meta.read_text()).get("config", {}) if meta.exists() else {}
    return config.get("train", {}).get("text_template") or "{title}"


def item_text(template: str, row: dict) -> str | None:
    """A listing's text as the model reads it, or None when it has no title (its photo alone serves)."""
    return listing_text(template, row) if (row.get("title") or "").strip() else None


def item_texts(template: str | None, rows: list[dict]) -> list[str | None]:
    """Each listing's text (``item_text``), a missing or NaN field read as blank; all None for a system
    that reads photos alone (``template`` None)."""
    if template is None:
        return [None] * len(rows)
    return [item_text(template, {f: None if row.get(f) is None or row.get(f) != row.get(f) else row[f]
                                 for f in TEXT_FIELDS}) for row in rows]

# ----------------------------------------------------------------------------- the rule

def resolve(cfg: Config, ds: str) -> Served:
    """The system the nightly run serves for ``ds`` (see the module docstring)."""
    store = ModelStore.at(cfg.models)
    production = registry.production(store)
    if production:
        info = registry.version_info(store, production).get("eval", {})
        weight, text_weight = float(info.get("serve_weight", 1.0)), float(info.get("text_weight", 0.0))
        if cfg.embed.text_weight >= 0:  # the operator's weight, not the evaluation's
            text_weight = cfg.embed.text_weight
        promoted = next((h for h in reversed(registry.history(store)) if h["to"] == production), {})
        why = f"the production model ({promoted.get('reason', 'promoted')})"
        if weight >= 1.0 and text_weight <= 0.0:
            return Served(SIGLIP, production, str(store.version_dir(production)), why)
        baseline = ensure_baseline(cfg, ds)[0] if weight < 1.0 else None
        version, folder = ensure_hybrid(store, production, baseline, weight, text_weight)
        parts = ([f"its title at weight {text_weight:g}"] if text_weight > 0 else []) + \
                ([f"the image baseline at weight {1 - weight:g}"] if weight < 1.0 else [])
        return Served(HYBRID, version, str(folder), f"{why}, with {' and '.join(parts)} as it was promoted")
    version, folder = ensure_baseline(cfg, ds)
    candidates = registry.list_versions(store)
    history = registry.history(store)
    retired = history[-1] if history and history[-1]["to"] is None else None
    why = ("the image baseline: no model has been trained yet" if not candidates else
           f"the image baseline: {retired['reason']}" if retired else
           f"the image baseline: no model has beaten it (newest candidate {candidates[-1]['version']} "
           f"{_lost(candidates[-1])})")
    return Served(IMAGE_BASELINE, version, str(folder), why)


def _lost(entry: dict) -> str:
    ndcg = entry.get("eval", {}).get("ndcg@5")
    return f"scored nDCG@5 {ndcg:.4f}, not promoted" if ndcg is not None else "not evaluated yet"


# ----------------------------------------------------------------------------- loading any system

# Every embedder: ``decode(photo bytes)`` one photo, ``embed(decoded, batch_size, texts)`` a batch, where
# ``texts`` holds each item's text (``item_texts(embedder.reads, rows)``; None: no title), and ``reads``,
# the text template of a system that reads titles (None: photos alone).

class SiglipEmbedder:
    def __init__(self, loaded, device: str, text_weight: float = 0.0):
        self.loaded, self.device, self.text_weight = loaded, device, text_weight
        self.reads = text_template(loaded.path) if text_weight > 0 else None

    def decode(self, data: bytes):
        return self.loaded.preprocess.decode([data])[0]

    def embed(self, decoded: list, batch_size: int, texts: list[str | None] | None = None) -> np.ndarray:
        from lookalike.siglip import embed_pixels, embed_texts

        photos = embed_pixels(self.loaded.model, np.stack(decoded), self.loaded.preprocess, batch_size,
                              bf16=self.device != "cpu")
        if self.text_weight <= 0.0:
            return photos
        if texts is None or len(texts) != len(decoded):
            raise ValueError(f"this system reads titles (text weight {self.text_weight:g}): give one text per photo")
        has_text = np.array([t is not None for t in texts])
        vectors = np.zeros_like(photos)
        if has_text.any():
            vectors[has_text] = embed_texts(self.loaded, [t for t in texts if t is not None])
        return with_text(photos, vectors, has_text, self.text_weight)


class BaselineEmbedder:
    reads = None

    def __init__(self, projection: Projection):
        self.projection, self.preprocess = projection, features.preprocess()

    def decode(self, data: bytes):
        return self.preprocess.decode([data])[0]

    def embed(self, decoded: list, batch_size: int, texts: list[str | None] | None = None) -> np.ndarray:
        return baseline_vectors(self.projection, np.stack(decoded))


class HybridEmbedder:
    def __init__(self, model: SiglipEmbedder, baseline: BaselineEmbedder, weight: float):
        self.model, self.baseline, self.weight = model, baseline, weight
        self.reads = model.reads

    def decode(self, data: bytes):
        return self.model.decode(data), self.baseline.decode(data)

    def embed(self, decoded: list, batch_size: int, texts: list[str | None] | None = None) -> np.ndarray:
        return combine(self.model.embed([d[0] for d in decoded], batch_size, texts),
                       self.baseline.embed([d[1] for d in decoded], batch_size), self.weight)


def kind_of(path: str | Path) -> str:
    meta = Path(path) / "lookalike.json"
    return json.loads(meta.read_text()).get("kind", SIGLIP) if meta.exists() else SIGLIP


def load_embedder(path: str, device: str = "cpu", text_weight: float = 0.0):
    """The embedder of a served folder: a SigLIP model (local or s3://; its photos and, with
    ``text_weight``, its titles), the baseline or a hybrid."""
    kind = kind_of(path) if "://" not in path else SIGLIP
    if kind == IMAGE_BASELINE:
        if _features_of(Path(path)) != features.FEATURES:
            raise LookalikeError(f"the image baseline in {path} was fitted with the features {_features_of(Path(path))}, "
                                 f"not this version's {features.FEATURES}: the next night fits the current ones "
                                 "(or run `lookalike embed --ds <ds>`)")
        return BaselineEmbedder(load_projection(Path(path) / "projection.npz"))
    if kind == HYBRID:
        spec = json.loads((Path(path) / "lookalike.json").read_text())
        models = Path(path).parents[1]
        model = load_embedder(str(models / SIGLIP / spec["model"]), device, spec.get("text_weight", 0.0))
        if spec["weight"] >= 1.0:
            return model
        return HybridEmbedder(model, load_embedder(str(models / "image-baseline" / spec["baseline"])), spec["weight"])
    from lookalike.objectstore import local_model_dir
    from lookalike.siglip import load_model

    loaded = load_model(local_model_dir(path))  # an s3:// model is fetched once per host
    loaded.model.to(device)
    return SiglipEmbedder(loaded, device, text_weight)
