"""Embed one ds's active catalogue with the serving model, on Spark.

Runs as ``python -m jobs.embed`` or ``spark-submit jobs/embed.py --ds …``; the Spark master
comes from ``spark.master`` in the config.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # spark-submit runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs._common import run_stage  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from pipelines.embed.stage import run_embed

    return run_stage("embed", __doc__, run_embed, argv)


if __name__ == "__main__":
    sys.exit(main())
