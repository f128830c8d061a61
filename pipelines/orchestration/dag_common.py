"""What Lookalike's DAGs share: default task arguments, the failure message, run params, and the
Assets that chain the DAGs (extract → nightly; finetune → the model; publish → each table).

DAG files import this at parse time, so it imports nothing heavy (no pyarrow, torch or Spark).
"""
from __future__ import annotations

import logging
from datetime import timedelta

from airflow.providers.standard.decorators.python import _PythonDecoratedOperator
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Asset, CronPartitionTimetable, Param, PartitionedAssetTimetable
from airflow.sdk.bases.decorator import task_decorator_factory

from lookalike import tables
from lookalike.orchestration.alerts import approval_notifiers, failure_notifiers, publish_deadline
from lookalike.config import Config, ConfigError, load_config
from lookalike.orchestration.jobs import STAGES

log = logging.getLogger("lookalike")

# Locations are configuration, read at run time; an event's extra carries the ds and where it is.
SNAPSHOT = Asset(name="lookalike.snapshot", uri="lookalike://work/snapshot")
MODEL = Asset(name="lookalike.model", uri="lookalike://models/siglip")
TABLE_ASSETS = {t.name: Asset(name=t.asset_name, uri=t.asset_uri) for t in tables.TABLES}
NIGHTLY_ASSETS = [TABLE_ASSETS[t] for t in tables.published_by(tables.NIGHTLY)]
USER_RECS_ASSETS = [TABLE_ASSETS[t] for t in tables.published_by(tables.USER_RECS)]
INTRADAY_ASSETS = [TABLE_ASSETS[t] for t in tables.published_by(tables.INTRADAY)]


def daily_partitions() -> CronPartitionTimetable:
    """One run per day, just after midnight UTC, for the day that ended: partition key ``YYYY-MM-DD``.

    Partitioned runs carry their day as ``partition_key``; their Asset events carry it too, so
    ``airflow backfill create --from-date A --to-date B`` makes one run per day of [A, B], and
    every day's event starts its own run downstream (plain Asset events would be merged into one).
    """
    return CronPartitionTimetable("0 0 * * *", timezone="UTC", run_offset=-1, key_format="%Y-%m-%d")


def per_snapshot() -> PartitionedAssetTimetable:
    """One run per partition of ``lookalike.snapshot``, with the snapshot's partition key."""
    return PartitionedAssetTimetable(assets=SNAPSHOT)


def per_published_day() -> PartitionedAssetTimetable:
    """One run per day lookalike_nightly publishes (its ``lookalike.item_embeddings`` partition)."""
    return PartitionedAssetTimetable(assets=TABLE_ASSETS["item_embeddings"])


def on_task_failure(context) -> None:
    """Log what failed, for which ds, and how to rerun it (the partition is replaced, not appended)."""
    ti = context.get("ti") or context.get("task_instance")
    dag_id, task_id = getattr(ti, "dag_id", "?"), getattr(ti, "task_id", "?")
    params = context.get("params") or {}
    ds = params.get("ds") or getattr(context.get("dag_run"), "partition_key", None) or context.get("ds") or "?"
    users = " --users" if task_id == "handoff" and dag_id == tables.USER_RECS else ""
    rerun = f"`lookalike {task_id} --ds {ds}{users}` runs the stage alone; " if task_id in STAGES else ""
    if dag_id == tables.INTRADAY:  # an hour, not a day: the next hour catches up on its own
        ds = params.get("as_of") or str(context.get("logical_date") or "?")
        rerun = f"`lookalike intraday --as-of {ds} --step {task_id}` runs the step alone; the next hour also " \
                "catches up; "
    log.error("lookalike: task %s of %s failed for ds=%s after %s tries: %s. Fix the cause, then clear the task "
              "to rerun it (Airflow UI, or `airflow tasks clear %s -t '^%s$'`); %sa rerun replaces the ds's "
              "partition and never appends.", task_id, dag_id, ds, getattr(ti, "try_number", "?"),
              context.get("exception"), dag_id, task_id, rerun)


class LookalikeTask(_PythonDecoratedOperator):
    """A Lookalike task: a TaskFlow task that tells OpenLineage what it reads and writes, as real datasets
    (pipelines/orchestration/lineage.py; used only when the OpenLineage provider is installed)."""

    def get_openlineage_facets_on_start(self):
        from lookalike.orchestration.lineage import operator_lineage

        return operator_lineage(self.dag_id, self.task_id)

    def get_openlineage_facets_on_complete(self, task_instance):
        return self.get_openlineage_facets_on_start()


def task(python_callable=None, **kwargs):
    """``@task`` for Lookalike's DAGs: Airflow's TaskFlow decorator, making :class:`LookalikeTask` tasks."""
    return task_decorator_factory(python_callable=python_callable, decorated_operator_class=LookalikeTask, **kwargs)


class DriftApproval(ApprovalOperator):
    """``approve_drift``: a night the drift gate refused (``publish`` skipped, its refusal in XCom) waits for an
    operator: Approve publishes it with the drift accepted (``publish_accepted``), Reject or no answer within
    ``publish.approval_timeout`` fails this task (no retry) and leaves the previous day served. Skipped when
    the gate passed."""

    def execute(self, context):
        from airflow.sdk.exceptions import AirflowSkipException

        if not context["ti"].xcom_pull(task_ids="publish", key="refused"):
            raise AirflowSkipException("the drift gate passed: nothing to approve")
        return super().execute(context)


def drift_approval() -> DriftApproval:
    """lookalike_nightly's ``approve_drift`` task."""
    refused = "(ti.xcom_pull(task_ids='publish', key='refused') or {})"  # rendered even when skipped: no refusal
    return DriftApproval(
        task_id="approve_drift",
        subject=f"Publish ds {{{{ {refused}.get('ds') }}}} beyond the drift bounds?",
        body=(f"The drift gate refused ds {{{{ {refused}.get('ds') }}}} against the previous published day:\n\n"
              f"{{% for breach in {refused}.get('breaches', []) %}}- {{{{ breach }}}}\n{{% endfor %}}\n"
              f"The run's checked tables: {{{{ {refused}.get('staged') }}}} (read them with DuckDB). Approve "
              "publishes the day with the drift accepted, and the run record says who approved it; Reject, or "
              "no answer, leaves the previous day served."),
        defaults=[ApprovalOperator.REJECT],
        fail_on_reject=True,
        trigger_rule="none_failed",
        retries=0,  # a human's answer: asking again would not change it
        response_timeout=timedelta(minutes=_CONFIG.publish.approval_timeout),
        notifiers=approval_notifiers(_CONFIG),
    )


def _parse_time_config():
    """The config at parse time (LOOKALIKE_CONFIG and LOOKALIKE_* of the DAG processor): who is told about
    failures and late nights (pipelines/orchestration/alerts.py), the intraday schedule. A config that does
    not load must not take the DAGs with it: they parse with the defaults, and every task, which loads the
    config itself, fails at once naming the bad key (bad input: no retries)."""
    try:
        return load_config()
    except ConfigError as exc:
        log.error("lookalike: the config does not load (%s); the DAGs are parsed with the default alerts and "
                  "schedule, and each task fails naming the problem until it is fixed", exc)
        return Config()


_CONFIG = _parse_time_config()

DEFAULT_ARGS = {
    "owner": "lookalike",
    "retries": 2,
    "retry_delay": timedelta(minutes=1),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=30),
    "execution_timeout": timedelta(hours=6),
    "on_failure_callback": [on_task_failure, *failure_notifiers(_CONFIG)],
}
# lookalike_nightly's DeadlineAlert (None: no deadline configured).
PUBLISH_DEADLINE = publish_deadline(_CONFIG)


def hourly():
    """lookalike_intraday's schedule: ``intraday.schedule`` (cron, UTC), or None (only triggered runs)."""
    from airflow.sdk import CronTriggerTimetable

    cron = _CONFIG.intraday.schedule.strip()
    return CronTriggerTimetable(cron, timezone="UTC") if cron else None


def run_params(*keys: str) -> dict:
    """The params a manual run may set: the partition date and the config keys named in ``keys``."""
    known = {
        "ds": Param(None, type=["null", "string"], description="partition date YYYY-MM-DD (manual runs carry no "
                                                                "logical date)"),
        "window_days": Param(None, type=["null", "integer"], minimum=1, description="override window_days"),
        "k": Param(None, type=["null", "integer"], minimum=1, description="override neighbors.k"),
        "accept_drift": Param(False, type="boolean", description="publish even if the ds differs from the previous "
                                                                 "published day beyond the publish.* bounds"),
    }
    return {key: known[key] for key in ("ds", *keys)}
