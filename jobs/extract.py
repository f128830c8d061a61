"""Extract the snapshot, catalogue and interaction log of one ds from the source."""
from __future__ import annotations

import sys

from jobs._common import run_stage


def main(argv: list[str] | None = None) -> int:
    from pipelines.extract.stage import run_extract

    return run_stage("extract", __doc__, run_extract, argv)


if __name__ == "__main__":
    sys.exit(main())
