"""
### lookalike_nightly

One run per `lookalike.snapshot` partition (a finished `lookalike_extract`, scheduled or
backfilled: the run's partition key is its ds), or a manual `{"ds": "YYYY-MM-DD"}`:

`embed` → `neighbors` → `experiments` → `publish` → (`handoff`, `report`); a night the drift gate
refuses: `publish` (skipped) → `approve_drift` → `publish_accepted` → (`handoff`, `report`)

- **embed** runs the serving model over the catalogue (incremental; on Spark).
- **neighbors** builds the top-k table with FAISS, tuned to the recall target.
- **experiments** builds, for each running A/B test (`experiments.*`), every arm's neighbours
  and the analysis of its logged events so far; nothing when none runs.
- **publish** checks every table and commits them atomically; a failed check publishes nothing.
  On success it emits an Asset event per published table (`lookalike.<table>`, extra: ds, run
  id, rows, location) for downstream DAGs; `lookalike_user_recs` follows each published day.
- **approve_drift** runs only when the drift gate refused the night (`publish` is then skipped and emits
  no Asset event): it waits for an operator (Airflow's human-in-the-loop approval, shown in the UI as
  awaiting input) with the breached bounds and their figures. **Approve** runs **publish_accepted**,
  which publishes the night with the drift accepted and records who approved it and when; **Reject**, or
  no answer within `publish.approval_timeout` minutes, fails it (no retry): the previous day stays served.
- **handoff** hands the published item lists (and each experiment arm's) to the online stores
  (`serving.sinks`: PostgreSQL, Redis) as a new generation, checked, then switched live
  atomically. It runs only after a successful publish, so a refused night leaves the stores
  serving the previous one; a store that is down fails this task alone (retried with backoff).
- **report** writes the run's HTML gallery.

Every task reads and writes the partition of its ds only; rerunning a ds replaces it.
"""
from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, get_current_context

from lookalike.orchestration.dag_common import (DEFAULT_ARGS, NIGHTLY_ASSETS, PUBLISH_DEADLINE, drift_approval,
                                                per_snapshot, run_params, task)


@dag(
    dag_id="lookalike_nightly",
    schedule=per_snapshot(),
    start_date=datetime(2000, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    deadline=PUBLISH_DEADLINE,  # alerts.publish_deadline_minutes
    params=run_params("k", "accept_drift"),
    doc_md=__doc__,
    tags=["lookalike"],
)
def lookalike_nightly():
    @task
    def embed() -> dict:
        from lookalike.orchestration import tasks

        return tasks.embed(get_current_context())

    @task
    def neighbors() -> dict:
        from lookalike.orchestration import tasks

        return tasks.neighbors(get_current_context())

    @task
    def experiments() -> dict:
        from lookalike.orchestration import tasks

        return tasks.experiments(get_current_context())

    @task(outlets=NIGHTLY_ASSETS)
    def publish() -> dict:
        from lookalike.orchestration import tasks

        return tasks.publish(get_current_context())

    @task(outlets=NIGHTLY_ASSETS)
    def publish_accepted() -> dict:
        from lookalike.orchestration import tasks

        return tasks.publish_accepted(get_current_context())

    @task(trigger_rule="none_failed_min_one_success")
    def handoff() -> dict:
        from lookalike.orchestration import tasks

        return tasks.handoff(get_current_context(), "items")

    @task(trigger_rule="none_failed_min_one_success")
    def report() -> dict:
        from lookalike.orchestration import tasks

        return tasks.report(get_current_context())

    published, accepted, served = publish(), publish_accepted(), [handoff(), report()]
    embed() >> neighbors() >> experiments() >> published >> drift_approval() >> accepted >> served
    published >> served


lookalike_nightly()
