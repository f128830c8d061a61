"""Check one ds's outputs and publish them atomically; a failed check publishes nothing."""
from __future__ import annotations

import sys

from jobs._common import run_stage


def main(argv: list[str] | None = None) -> int:
    from pipelines.publish.stage import run_publish

    return run_stage("publish", __doc__, run_publish, argv)


if __name__ == "__main__":
    sys.exit(main())
