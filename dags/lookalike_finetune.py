"""
### lookalike_finetune

Weekly, and on demand: fine-tunes SigLIP on the snapshot of ds on the `gpu` queue and pool (a
GPU worker; `torchrun` across its GPUs when `train.nproc_per_node` > 1), then scores the
candidate offline against the production model and both baselines on the same queries, and
promotes it only when the paired-bootstrap interval of its nDCG@5 gain is above zero against the
best baseline and against production (within noise of production: kept as a candidate).

Trains on the newest finished snapshot on or before the run's ds (a scheduled weekly run's own day
has none until the next night's extract). On success it emits the `lookalike.model` Asset
event (extra: ds, version, decision). Manual runs: pass `{"ds": "YYYY-MM-DD"}`.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, get_current_context

from lookalike.orchestration.dag_common import DEFAULT_ARGS, MODEL, run_params, task


@dag(
    dag_id="lookalike_finetune",
    schedule="@weekly",
    start_date=datetime(2000, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params=run_params(),
    doc_md=__doc__,
    tags=["lookalike", "gpu"],
)
def lookalike_finetune():
    @task(queue="gpu", pool="gpu", execution_timeout=timedelta(hours=12))
    def train() -> dict:
        from lookalike.orchestration import tasks

        return tasks.train(get_current_context())

    @task(outlets=[MODEL])
    def evaluate(model: dict) -> dict:
        from lookalike.orchestration import tasks

        return tasks.evaluate(get_current_context(), model["model_uri"])

    evaluate(train())


lookalike_finetune()
