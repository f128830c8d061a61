"""
### lookalike_user_recs

One run per day `lookalike_nightly` publishes (its `lookalike.item_embeddings` partition), or a
manual `{"ds": "YYYY-MM-DD"}`:

`userrec` → `publish` → `handoff`

- **userrec** trains the PixRec-style user model on the ds's interaction log (item tower over the
  production SigLIP's image and prompt-text embeddings, causal user tower, mixed contrastive
  objective), scores it leave-last-out against its text-only, image-only, ID-only and popularity
  variants, and ranks the on-sale items for every active user.
- **publish** checks the recommendations and commits `user_recommendations` and the ds's
  `eval_metrics` (with the `userrec_*` systems) atomically; it emits their Asset events.
- **handoff** hands the published recommendations to the online stores (`serving.sinks`) as a new
  generation of the `users` feed, switched live atomically (the item lists' `handoff` is
  lookalike_nightly's, right after its publish: each feed follows the publish that made it).

Rerunning a ds replaces its partitions.
"""
from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, get_current_context

from lookalike.orchestration.dag_common import (DEFAULT_ARGS, USER_RECS_ASSETS, per_published_day, run_params,
                                                task)


@dag(
    dag_id="lookalike_user_recs",
    schedule=per_published_day(),
    start_date=datetime(2000, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params=run_params(),
    doc_md=__doc__,
    tags=["lookalike"],
)
def lookalike_user_recs():
    @task
    def userrec() -> dict:
        from lookalike.orchestration import tasks

        return tasks.userrec(get_current_context())

    @task(outlets=USER_RECS_ASSETS)
    def publish() -> dict:
        from lookalike.orchestration import tasks

        return tasks.publish_user_recs(get_current_context())

    @task
    def handoff() -> dict:
        from lookalike.orchestration import tasks

        return tasks.handoff(get_current_context(), "users")

    userrec() >> publish() >> handoff()


lookalike_user_recs()
