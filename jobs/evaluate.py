"""Score a model against the baselines on one ds's interaction log; promote it if it wins.

Evaluates the model trained for this ds (``lookalike train --ds``), else the serving model.
"""
from __future__ import annotations

import sys

from jobs._common import run_stage


def _evaluate(cfg, ds):
    from pipelines.embed.stage import resolve_model
    from pipelines.evaluate.stage import run_evaluate

    _, path = resolve_model(cfg, None)
    return run_evaluate(cfg, ds, path)


def main(argv: list[str] | None = None) -> int:
    return run_stage("evaluate", __doc__, _evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
