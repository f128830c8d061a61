"""
### lookalike_intraday

Every hour between nights (`intraday.schedule`, on the hour UTC by default), or a manual
`{"as_of": "YYYY-MM-DDTHH:MM"}`: what changed in the source since the newest published night, applied
to its lists.

`update` → `publish` → `handoff`

- **update** reads the listings changed since the last finished hour (`updated_at` is the watermark),
  validates and decodes their photos, embeds the new ones with the system the night served, and updates
  the night's lists with them: new listings get neighbours and join the lists they belong in; sold,
  deleted and rejected ones leave every list.
- **publish** checks the changed lists and publishes them as the night's partition of
  `item_neighbors_intraday` in one manifest switch (the view `item_neighbors_live` is the night with
  its hours).
- **handoff** writes them into each online store's live generation in one transaction; a store that is
  down fails this task alone (retried with backoff), and one whose night is not handed off yet waits.

An hour killed anywhere leaves nothing readable; the next one catches up from the last finished hour.
An hour that races a night never publishes twice: the night folds every change in, the hours then
build on it. One run at a time; a missed hour is not replayed (the next covers it).
"""
from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context

from lookalike.orchestration.dag_common import DEFAULT_ARGS, INTRADAY_ASSETS, hourly, task


@dag(
    dag_id="lookalike_intraday",
    schedule=hourly(),  # intraday.schedule
    start_date=datetime(2000, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={**DEFAULT_ARGS, "execution_timeout": timedelta(minutes=50)},
    params={"as_of": Param(None, type=["null", "string"], description="apply the changes before this UTC time, "
                                                                      "YYYY-MM-DDTHH:MM (default: the run's time)")},
    doc_md=__doc__,
    tags=["lookalike"],
)
def lookalike_intraday():
    @task
    def update() -> dict:
        from lookalike.orchestration import tasks

        return tasks.intraday(get_current_context(), "update")

    @task(outlets=INTRADAY_ASSETS)
    def publish() -> dict:
        from lookalike.orchestration import tasks

        return tasks.intraday(get_current_context(), "publish")

    @task
    def handoff() -> dict:
        from lookalike.orchestration import tasks

        return tasks.intraday(get_current_context(), "handoff")

    update() >> publish() >> handoff()


lookalike_intraday()
