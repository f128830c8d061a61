"""Check one ds's outputs and publish them atomically; a failed check publishes nothing.

The structural checks (k neighbours per item, descending scores, unit embeddings …) and the gate
against the previous published day (rows, coverage, score distribution, neighbour overlap for
unchanged photos: `publish.*` bounds) must pass. `--accept-drift` publishes a ds beyond those bounds
(the run record says so)."""
from __future__ import annotations

import os
import sys

from jobs._common import run_stage


def main(argv: list[str] | None = None) -> int:
    from pipelines.publish.stage import run_publish

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--accept-drift" in argv:
        argv.remove("--accept-drift")
        os.environ["LOOKALIKE_PUBLISH__ACCEPT_DRIFT"] = "true"
    return run_stage("publish", __doc__, run_publish, argv)


if __name__ == "__main__":
    sys.exit(main())
