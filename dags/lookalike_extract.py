"""
### lookalike_extract

Daily: reads the listings created in [ds − window_days, ds), the active catalogue and the recent
interaction log from the source database; validates, decodes and resizes every photo (bad ones
go to quarantine with their reason) into the ds's work area.

On success it emits the `lookalike.snapshot` Asset event (extra: ds), which schedules
`lookalike_nightly` for that ds. Manual runs: pass `{"ds": "YYYY-MM-DD"}` (and optionally
`window_days`). Rerunning a ds replaces its work area.
"""
from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, get_current_context, task

from pipelines.dag_common import DEFAULT_ARGS, SNAPSHOT, run_params


@dag(
    dag_id="lookalike_extract",
    schedule="@daily",
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
        from pipelines import tasks

        return tasks.extract(get_current_context())

    extract()


lookalike_extract()
