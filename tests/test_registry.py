"""The model registry: candidates, the production pointer, promote and rollback, through the CLI too."""
import json

import pytest

from lookalike import registry
from lookalike.tools.cli import main
from lookalike.storage import ModelStore


def _version(store: ModelStore, name: str, parent=None) -> None:
    folder = store.version_dir(name)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    registry.register(store, name, {"snapshot": {"ds": "2026-11-21"}, "parent": parent, "config": {"k": 1},
                                    "metrics": {"val": {"recall@1": 0.5, "recall@5": 0.9}}, "architecture": "tiny"})


def test_promote_rollback_and_which_siglip_the_user_model_reads(tmp_path, capsys, monkeypatch):
    store = ModelStore(tmp_path / "models")
    with pytest.raises(registry.RegistryError, match="no model in the registry"):
        registry.feature_model(store)
    _version(store, "v1")
    _version(store, "v2", parent="v1")
    assert registry.feature_model(store) == ("v2", "newest candidate (none promoted to production yet)")
    entry = registry.version_info(store, "v2")
    assert entry["parent"] == "v1" and entry["config"] == {"k": 1} and entry["snapshot"]["ds"] == "2026-11-21"

    monkeypatch.setenv("LOOKALIKE_MODELS", str(store.root))
    assert main(["models", "promote", "v1"]) == 0
    assert registry.feature_model(store) == ("v1", "production")
    assert main(["models", "promote", "v2"]) == 0
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    listing = capsys.readouterr().out
    assert "production" in listing and "candidate" in listing and "0.9" in listing
    assert main(["models", "rollback"]) == 0 and registry.production(store) == "v1"
    assert main(["models", "rollback"]) == 2  # nothing before v1: a clear error, production unchanged
    assert "nothing to roll back to" in capsys.readouterr().err and registry.production(store) == "v1"
    assert main(["models", "promote", "v9"]) == 2
    assert [p.name for p in store.root.iterdir() if p.name.startswith(".")] == []  # no temp files left
    assert json.loads(store.registry_path().read_text())["production"] == "v1"


def test_a_version_whose_files_are_gone_cannot_be_promoted(tmp_path):
    store = ModelStore(tmp_path / "models")
    _version(store, "v1")
    (store.version_dir("v1") / "config.json").unlink()
    with pytest.raises(registry.RegistryError, match="files are missing"):
        registry.promote(store, "v1")
    assert registry.production(store) is None
