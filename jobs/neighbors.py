"""Build one ds's top-k neighbour table from its embeddings with FAISS."""
from __future__ import annotations

import sys

from jobs._common import run_stage


def main(argv: list[str] | None = None) -> int:
    from pipelines.neighbors.stage import run_neighbors

    return run_stage("neighbors", __doc__, run_neighbors, argv)


if __name__ == "__main__":
    sys.exit(main())
