"""
### lookalike_nightly

The whole nightly pipeline for one partition date `ds`:

`extract` → `train` → `evaluate` → `embed` → `neighbors` → `publish` → `report`

- **extract** reads the listings created in [ds − window_days, ds), the active catalogue and
  the recent interaction log; bad images are quarantined with their reason.
- **train** fine-tunes SigLIP on the snapshot's image–title pairs (reused if this snapshot was
  already trained on with this config) and registers a candidate.
- **evaluate** scores the candidate against the image and text baselines on the logged
  similar-items clicks and promotes it when it wins.
- **embed** runs the serving model over the catalogue on Spark.
- **neighbors** builds the top-k table with FAISS.
- **publish** checks every table and commits them atomically; a failed check publishes nothing.
  On success it emits an Asset event per published table (`lookalike.<table>`, extra: ds, run
  id, rows, location), which downstream DAGs can be scheduled on.
- **report** writes the run's HTML gallery (`lookalike report`).

Every task reads and writes the partition of its `ds` only; rerunning a `ds` replaces it.
Manual triggers carry no logical date: pass `{"ds": "YYYY-MM-DD"}` as the run's params.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, Param, dag, get_current_context, task

PUBLISHED = ("listings_snapshot", "catalog", "quarantine", "item_embeddings", "item_neighbors", "eval_metrics")
# The warehouse location is configuration, read at run time; the event's extra carries it.
TABLE_ASSETS = [Asset(name=f"lookalike.{table}", uri=f"lookalike://warehouse/{table}") for table in PUBLISHED]

DEFAULT_ARGS = {
    "owner": "lookalike",
    "retries": 2,
    "retry_delay": timedelta(minutes=1),
    "retry_exponential_backoff": True,
    "execution_timeout": timedelta(hours=6),
}


@dag(
    dag_id="lookalike_nightly",
    schedule="@daily",
    start_date=datetime(2000, 1, 1),  # early, so any ds can be run or backfilled; catchup is off
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params={"ds": Param(None, type=["null", "string"], description="partition date YYYY-MM-DD (manual runs)")},
    doc_md=__doc__,
    tags=["lookalike"],
)
def lookalike_nightly():
    @task
    def extract() -> dict:
        from pipelines import tasks

        return tasks.extract(get_current_context())

    @task
    def train() -> dict:
        from pipelines import tasks

        return tasks.train(get_current_context())

    @task
    def evaluate(model: dict) -> dict:
        from pipelines import tasks

        return tasks.evaluate(get_current_context(), model["model_uri"])

    @task
    def embed() -> dict:
        from pipelines import tasks

        return tasks.embed(get_current_context())

    @task
    def neighbors() -> dict:
        from pipelines import tasks

        return tasks.neighbors(get_current_context())

    @task(outlets=TABLE_ASSETS)
    def publish() -> dict:
        from pipelines import tasks

        return tasks.publish(get_current_context())

    @task
    def report() -> dict:
        from pipelines import tasks

        return tasks.report(get_current_context())

    snapshot = extract()
    model = train()
    snapshot >> model
    evaluation = evaluate(model)
    embeddings = embed()
    evaluation >> embeddings
    embeddings >> neighbors() >> publish() >> report()


lookalike_nightly()
