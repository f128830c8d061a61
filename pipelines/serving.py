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

The rule (:func:`resolve`): the production model, as the hybrid it was promoted as when its
weight is below 1; with none promoted, the image baseline. A candidate that was not promoted is
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

def hybrid_version(model_version: str, baseline_version: str, weight: float) -> str:
    return f"hybrid-{model_version}-{baseline_version.removeprefix('image-baseline-')}-w{round(weight * 100):02d}"


def ensure_hybrid(store: ModelStore, model_version: str, baseline_version: str, weight: float) -> tuple[str, Path]:
    version = hybrid_version(model_version, baseline_version, weight)
    folder = store.hybrid_dir(version)
    if not (folder / "lookalike.json").exists():
        spec = {"kind": HYBRID, "version": version, "model": model_version, "baseline": baseline_version,
                "weight": weight}
        atomic_write_text(folder / "lookalike.json", json.dumps(spec, indent=2))
    return version, folder


def combine(model_vectors: np.ndarray, baseline: np.ndarray, weight: float) -> np.ndarray:
    """[√w · model, √(1 − w) · baseline] of unit rows: unit rows whose dot products blend the two cosines."""
    return np.concatenate([np.sqrt(weight) * model_vectors, np.sqrt(1.0 - weight) * baseline],
                          axis=1).astype(np.float32)


# ----------------------------------------------------------------------------- the rule

def resolve(cfg: Config, ds: str) -> Served:
    """The system the nightly run serves for ``ds`` (see the module docstring)."""
    store = ModelStore.at(cfg.models)
    production = registry.production(store)
    if production:
        info = registry.version_info(store, production)
        weight = float(info.get("eval", {}).get("serve_weight", 1.0))
        promoted = next((h for h in reversed(registry.history(store)) if h["to"] == production), {})
        why = f"the production model ({promoted.get('reason', 'promoted')})"
        if weight >= 1.0:
            return Served(SIGLIP, production, str(store.version_dir(production)), why)
        baseline, _ = ensure_baseline(cfg, ds)
        version, folder = ensure_hybrid(store, production, baseline, weight)
        return Served(HYBRID, version, str(folder),
                      f"{why}, blended with the image baseline at weight {weight:g} as it was promoted")
    version, folder = ensure_baseline(cfg, ds)
    candidates = registry.list_versions(store)
    why = ("the image baseline: no model has been trained yet" if not candidates else
           f"the image baseline: no model has beaten it (newest candidate {candidates[-1]['version']} "
           f"{_lost(candidates[-1])})")
    return Served(IMAGE_BASELINE, version, str(folder), why)


def _lost(entry: dict) -> str:
    ndcg = entry.get("eval", {}).get("ndcg@5")
    return f"scored nDCG@5 {ndcg:.4f}, not promoted" if ndcg is not None else "not evaluated yet"


# ----------------------------------------------------------------------------- loading any system

class SiglipEmbedder:
    def __init__(self, loaded, device: str):
        self.loaded, self.device = loaded, device

    def decode(self, data: bytes):
        return self.loaded.preprocess.decode([data])[0]

    def embed(self, decoded: list, batch_size: int) -> np.ndarray:
        from lookalike.siglip import embed_pixels

        return embed_pixels(self.loaded.model, np.stack(decoded), self.loaded.preprocess, batch_size,
                            bf16=self.device != "cpu")


class BaselineEmbedder:
    def __init__(self, projection: Projection):
        self.projection, self.preprocess = projection, features.preprocess()

    def decode(self, data: bytes):
        return self.preprocess.decode([data])[0]

    def embed(self, decoded: list, batch_size: int) -> np.ndarray:
        return baseline_vectors(self.projection, np.stack(decoded))


class HybridEmbedder:
    def __init__(self, model: SiglipEmbedder, baseline: BaselineEmbedder, weight: float):
        self.model, self.baseline, self.weight = model, baseline, weight

    def decode(self, data: bytes):
        return self.model.decode(data), self.baseline.decode(data)

    def embed(self, decoded: list, batch_size: int) -> np.ndarray:
        return combine(self.model.embed([d[0] for d in decoded], batch_size),
                       self.baseline.embed([d[1] for d in decoded], batch_size), self.weight)


def kind_of(path: str | Path) -> str:
    meta = Path(path) / "lookalike.json"
    return json.loads(meta.read_text()).get("kind", SIGLIP) if meta.exists() else SIGLIP


def load_embedder(path: str, device: str = "cpu"):
    """The embedder of a served folder: a SigLIP model (local or s3://), the baseline or a hybrid."""
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
        return HybridEmbedder(load_embedder(str(models / SIGLIP / spec["model"]), device),
                              load_embedder(str(models / "image-baseline" / spec["baseline"])), spec["weight"])
    from lookalike.objectstore import local_model_dir
    from lookalike.siglip import load_model

    loaded = load_model(local_model_dir(path))  # an s3:// model is fetched once per host
    loaded.model.to(device)
    return SiglipEmbedder(loaded, device)
