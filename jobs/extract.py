"""Extract the snapshot, catalogue and interaction log of one ds from the source.

Runs as ``python -m jobs.extract`` or ``spark-submit jobs/extract.py --ds …`` (photos decoded on
Spark from ``extract.spark_min_rows`` listings on).
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # spark-submit runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs._common import run_stage  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from pipelines.extract.stage import run_extract

    return run_stage("extract", __doc__, run_extract, argv)


if __name__ == "__main__":
    sys.exit(main())
