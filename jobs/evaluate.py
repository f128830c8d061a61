"""Score a model against the baselines on one ds's interaction log; promote it if it wins.

Evaluates the model trained for this ds (``lookalike train --ds``), else production, else the newest candidate.
"""
from __future__ import annotations

import sys

from jobs._common import run_stage


def _evaluate(cfg, ds):
    from pipelines import registry
    from pipelines.evaluate.stage import run_evaluate
    from pipelines.storage import ModelStore

    store = ModelStore.at(cfg.models)
    trained = [v["version"] for v in registry.list_versions(store) if v.get("snapshot", {}).get("ds") == ds]
    version = trained[-1] if trained else registry.feature_model(store)[0]
    path = str(store.version_dir(version))
    return run_evaluate(cfg, ds, path)


def main(argv: list[str] | None = None) -> int:
    return run_stage("evaluate", __doc__, _evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
