"""Fine-tune SigLIP on one ds's snapshot and register the result as a candidate model.

Data-parallel: `torchrun --nproc_per_node N -m jobs.train --ds YYYY-MM-DD` (one rank per GPU; gloo on CPU).
A rerun of the same ds and config resumes from its last checkpoint, or reuses the finished model."""
from __future__ import annotations

import sys

from jobs._common import run_stage


def main(argv: list[str] | None = None) -> int:
    from pipelines.train.stage import run_train

    return run_stage("train", __doc__, run_train, argv)


if __name__ == "__main__":
    sys.exit(main())
