"""
### lookalike_extract

Daily, for the day that ended (partition key `YYYY-MM-DD`): reads the listings created in [ds − window_days, ds), the active catalogue and the recent
interaction log from the source database; validates, decodes and resizes every photo (bad ones
go to quarantine with their reason) into the ds's work area.

On success it emits the `lookalike.snapshot` Asset event for the ds's partition (extra: ds),
which starts `lookalike_nightly` for that ds. Backfill:
`airflow backfill create --dag-id lookalike_extract --from-date A --to-date B` runs each day of
[A, B] once, and each starts its own nightly run; add `--reprocess-behavior completed` to redo
days already done. Manual runs: pass `{"ds": "YYYY-MM-DD"}` (and optionally `window_days`).
Rerunning a ds replaces its work area, and its nightly run replaces its published partition.
"""
from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, get_current_context

from lookalike.orchestration.dag_common import DEFAULT_ARGS, SNAPSHOT, daily_partitions, run_params, task


@dag(
    dag_id="lookalike_extract",
    schedule=daily_partitions(),
    start_date=datetime(2000, 1, 1),  # early, so any ds can be run or backfilled; catchup is off
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params=run_params("window_days"),
    doc_md=__doc__,
    tags=["lookalike"],
)
def lookalike_extract():
    @task(outlets=[SNAPSHOT])
    def extract() -> dict:
        from lookalike.orchestration import tasks

        return tasks.extract(get_current_context())

    extract()


lookalike_extract()
