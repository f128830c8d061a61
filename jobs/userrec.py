"""Train and score the user model for one ds, then publish its recommendations and metrics.

Trains the PixRec-style model (and the variants it is compared with, `userrec.variants`) on the
ds's interaction log, writes `user_recommendations` and the `userrec_*` rows of `eval_metrics`,
and publishes both atomically (`--no-publish`: leave them in the work area)."""
from __future__ import annotations

import sys

from jobs._common import run_stage


def main(argv: list[str] | None = None) -> int:
    from pipelines.publish.stage import publish_user_recs
    from pipelines.userrec.stage import run_userrec

    argv = list(sys.argv[1:] if argv is None else argv)
    publish = "--no-publish" not in argv
    argv = [a for a in argv if a != "--no-publish"]

    def userrec(cfg, ds):
        result = run_userrec(cfg, ds)
        return {**result, "published": publish_user_recs(cfg, ds) if publish else None}

    return run_stage("userrec", __doc__, userrec, argv)


if __name__ == "__main__":
    sys.exit(main())
