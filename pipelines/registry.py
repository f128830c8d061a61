"""The model registry: versions under ``<models>/siglip/<version>/`` and ``registry.json``.

``registry.json`` lists every version with its stage (``candidate`` or ``production``), the
history of promotions, so ``rollback`` can return to the previous production model, and the
fitted image baseline. It is rewritten atomically; a crash never leaves it half-written. What the
nightly run serves is decided in ``pipelines/serving.py``.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from lookalike.errors import LookalikeError
from lookalike.atomic import atomic_write_text
from lookalike.storage import ModelStore


class RegistryError(LookalikeError):
    pass


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _read(store: ModelStore) -> dict:
    path = store.registry_path()
    if not path.exists():
        return {"versions": {}, "production": None, "history": []}
    return json.loads(path.read_text())


def _write(store: ModelStore, data: dict) -> None:
    atomic_write_text(store.registry_path(), json.dumps(data, indent=2, sort_keys=True))


def _registration_order(item: tuple[str, dict]) -> tuple:
    return item[1]["registered_at"], item[1].get("seq", 0)


def register(store: ModelStore, version: str, metadata: dict) -> None:
    """Add a trained version as a candidate (idempotent)."""
    data = _read(store)
    entry = data["versions"].setdefault(version, {"stage": "candidate", "registered_at": _now(),
                                                  "seq": len(data["versions"])})
    entry.update({k: metadata[k] for k in ("snapshot", "parent", "metrics", "architecture", "config", "ds")
                  if k in metadata})
    _write(store, data)


def record_metrics(store: ModelStore, version: str, metrics: dict) -> None:
    """Attach offline-evaluation metrics (e.g. nDCG@5) to a registered version."""
    data = _read(store)
    if version not in data["versions"]:
        raise RegistryError(f"unknown model version {version!r}")
    data["versions"][version].setdefault("eval", {}).update(metrics)
    _write(store, data)


def version_info(store: ModelStore, version: str) -> dict:
    return _read(store)["versions"].get(version, {})


def list_versions(store: ModelStore) -> list[dict]:
    data = _read(store)
    return [{"version": v, **e, "stage": "production" if v == data["production"] else "candidate"}
            for v, e in sorted(data["versions"].items(), key=_registration_order)]


def promote(store: ModelStore, version: str, reason: str = "manual") -> None:
    data = _read(store)
    if version not in data["versions"]:
        known = ", ".join(data["versions"]) or "none"
        raise RegistryError(f"unknown model version {version!r}; registered versions: {known}")
    if not (store.version_dir(version) / "config.json").exists():
        raise RegistryError(f"model version {version} is registered but its files are missing "
                            f"under {store.version_dir(version)}")
    if data["production"] != version:
        data["history"].append({"from": data["production"], "to": version, "at": _now(), "reason": reason})
        data["production"] = version
    _write(store, data)


def retire(store: ModelStore, reason: str) -> None:
    """Take the production model out of service (the evaluation found the image baseline better
    beyond noise): the night serves the image baseline; ``rollback`` brings the model back."""
    data = _read(store)
    if data["production"] is None:
        return
    data["history"].append({"from": data["production"], "to": None, "at": _now(), "reason": reason})
    data["production"] = None
    _write(store, data)


def rollback(store: ModelStore) -> str | None:
    """Return production to the version before the last promotion (or retirement); returns it."""
    data = _read(store)
    if not data["history"] or data["history"][-1]["from"] is None:
        raise RegistryError("nothing to roll back to: production has had a single version (or none)")
    last = data["history"].pop()
    data["production"] = last["from"]
    _write(store, data)
    return data["production"]


def production(store: ModelStore) -> str | None:
    return _read(store)["production"]


def history(store: ModelStore) -> list[dict]:
    return _read(store)["history"]


def baseline(store: ModelStore) -> str | None:
    """The fitted image baseline's version (pipelines/serving.py), once one has been fitted."""
    return _read(store).get("baseline")


def set_baseline(store: ModelStore, version: str) -> None:
    data = _read(store)
    data["baseline"] = version
    _write(store, data)


def feature_model(store: ModelStore) -> tuple[str, str]:
    """(version, why) of the SigLIP whose features the user model reads: production if promoted,
    else the newest candidate. (Similar items never serve an un-promoted candidate: serving.resolve.)"""
    data = _read(store)
    if data["production"]:
        return data["production"], "production"
    if not data["versions"]:
        raise RegistryError(f"no model in the registry at {store.root}: run `lookalike train --ds …` first")
    newest = max(data["versions"].items(), key=_registration_order)[0]
    return newest, "newest candidate (none promoted to production yet)"
