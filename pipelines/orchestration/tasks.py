"""What each Airflow task calls: resolve the partition date and the config, run one stage.

DAG files import this module inside their tasks, never at parse time. Tasks exchange URIs and
small JSON-able dicts through XCom, never data.
"""
from __future__ import annotations

import functools
import logging
import os
from datetime import date

from lookalike.config import Config, load_config
from lookalike.errors import BAD_INPUT, TRANSIENT, LookalikeError, classify, describe
from lookalike.orchestration.jobs import STAGES

log = logging.getLogger("lookalike")


def fail_fast_on_bad_input(fn):
    """Bad input or a failed check (``errors.classify``) fails the task at once: retrying cannot help.

    A transient failure (a lost connection, S3 SlowDown) and a bug go through the DAG's retries,
    with exponential backoff (``dag_common.DEFAULT_ARGS``).
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            from airflow.sdk.exceptions import AirflowSkipException

            if isinstance(exc, AirflowSkipException):  # a decision (a refused night waits), not a failure
                raise
            kind = classify(exc)
            if kind == BAD_INPUT:
                from airflow.sdk.exceptions import AirflowFailException

                log.error("%s: %s", exc.__class__.__name__, exc)
                raise AirflowFailException(f"{exc.__class__.__name__}: {exc}") from exc
            if kind == TRANSIENT:
                log.warning("transient failure, the task will be retried: %s", describe(exc))
            raise

    return wrapper


def partition_date(context: dict) -> str:
    """The ds a task works on: the ``ds`` param when given (manual triggers have no logical date),
    else the run's partition key (scheduled and backfilled runs of the partitioned DAGs), else the
    ds of the Asset event that triggered the run, else the run's logical date."""
    params = context.get("params") or {}
    partition_key = getattr(context.get("dag_run"), "partition_key", None)
    ds = params.get("ds") or partition_key or _triggering_ds(context) or context.get("ds")
    if not ds:
        raise LookalikeError("no partition date: trigger the DAG with a logical date or the param ds=YYYY-MM-DD")
    try:
        date.fromisoformat(ds)
    except ValueError:
        raise LookalikeError(f"partition date {ds!r} is not YYYY-MM-DD") from None
    return ds


def _triggering_ds(context: dict) -> str | None:
    """The newest ds named by the events that triggered an Asset-scheduled run."""
    events = context.get("triggering_asset_events") or {}
    found = [(event.extra or {}).get("ds") for asset_events in events.values() for event in asset_events]
    found = sorted({ds for ds in found if ds})
    if len(found) > 1:  # Airflow merged the events of several days into one run
        log.warning("this run was triggered by the snapshots of %s; it processes %s only. Trigger %s with "
                    "{\"ds\": \"<day>\"} for each of %s.", ", ".join(found), found[-1],
                    context.get("dag").dag_id if context.get("dag") else "the DAG", ", ".join(found[:-1]))
    return found[-1] if found else None


def environ_for(context: dict) -> dict[str, str]:
    """The task's environment with the run's params (``window_days``, ``k``, ``accept_drift``) as config overrides,
    and the credentials of the configured Airflow Connections (pipelines/orchestration/connections.py), which
    this task's own process gets too (boto3 reads the object store's from os.environ). Resolved once per task
    try (``_resolved``)."""
    return _resolved(context)[0]


def config_for(context: dict) -> Config:
    """The config, with the run's params applied as overrides (loaded once per task try)."""
    return _resolved(context)[1]


_RESOLVED: dict[tuple, tuple[dict, Config]] = {}


def _resolved(context: dict) -> tuple[dict[str, str], Config]:
    """(environment, config) of the running task try: the Connections looked up and the process's environment
    set once, however many times a task asks. A context without a task instance is resolved every time."""
    ti = context.get("ti")
    key = tuple(getattr(ti, name, None) for name in ("dag_id", "run_id", "task_id", "map_index", "try_number"))
    if ti is None or key not in _RESOLVED:
        environ = _environ(context)
        resolved = (environ, load_config(environ=environ))
        if ti is None:
            return resolved
        _RESOLVED.clear()  # one task at a time in a process
        _RESOLVED[key] = resolved
    return _RESOLVED[key]


def _environ(context: dict) -> dict[str, str]:
    from lookalike.orchestration import lineage
    from lookalike.orchestration.connections import airflow_environ, apply_to_process

    params = context.get("params") or {}
    overrides = {"LOOKALIKE_WINDOW_DAYS": params.get("window_days"), "LOOKALIKE_NEIGHBORS__K": params.get("k"),
                 "LOOKALIKE_PUBLISH__ACCEPT_DRIFT": "true" if params.get("accept_drift") else None}
    environ = airflow_environ({**os.environ, **{name: str(value) for name, value in overrides.items()
                                                if value is not None}})
    apply_to_process(environ)
    lineage.remember(environ)  # the datasets of the task's COMPLETE lineage event, where they live
    return environ


def _annotate_outlets(context: dict, extra_of) -> None:
    """Set each outlet Asset event's extra to ``extra_of(asset name)`` (skipped when it returns None)."""
    for asset in getattr(context.get("task"), "outlets", None) or []:
        extra = extra_of(asset.name)
        if extra is not None:
            context["outlet_events"][asset].extra = extra


def snapshot_date(context: dict) -> str:
    """The ds lookalike_finetune trains and evaluates on: the newest finished extract (its snapshot) on or
    before the run's ds. A weekly run's logical date is a day whose own snapshot only exists after the next
    night's extract; it takes the newest one there is."""
    from lookalike.extract.photos import MARKER

    ds, wh = partition_date(context), _warehouse(context)
    done = [day for day in wh.work_days() if day <= ds and wh.work(day, MARKER).exists()]
    if not done:
        raise LookalikeError(f"no finished extract on or before ds={ds} in {wh.work_root}: lookalike_finetune trains "
                             "on a snapshot; run lookalike_extract (or `lookalike extract --ds`) first")
    if done[-1] != ds:
        log.info("ds=%s has no snapshot of its own: training and evaluating on the newest one, ds=%s", ds, done[-1])
    return done[-1]


def _launched(context: dict, stage: str, ds: str | None = None) -> tuple[str, dict]:
    """(ds, result) of the stage (``STAGES``), in this process or as a job, as ``<stage>.launcher`` says;
    ``ds``: the run's partition date unless given."""
    from lookalike.orchestration.launch import run_stage

    (environ, cfg), ds = _resolved(context), ds or partition_date(context)
    return ds, run_stage(cfg, stage, ds, lambda: STAGES[stage].run(cfg, ds), environ)


def _run(context: dict, stage: str, ds: str | None = None, **options) -> dict:
    """The stage (``STAGES``) in this process, for the run's partition date unless ``ds`` is given."""
    return STAGES[stage].run(config_for(context), ds or partition_date(context), **options)


@fail_fast_on_bad_input
def extract(context: dict) -> dict:
    ds, result = _launched(context, "extract")
    _annotate_outlets(context, lambda name: {"ds": ds})
    return result


@fail_fast_on_bad_input
def train(context: dict) -> dict:
    return _launched(context, "train", snapshot_date(context))[1]


@fail_fast_on_bad_input
def evaluate(context: dict, model_uri: str) -> dict:
    ds = snapshot_date(context)
    result = _run(context, "evaluate", ds, model_uri=model_uri)
    _annotate_outlets(context, lambda name: {"ds": ds, "version": result["model_version"],
                                             "promoted": result["promoted"], "decision": result["decision"]})
    return result


@fail_fast_on_bad_input
def embed(context: dict) -> dict:
    return _launched(context, "embed")[1]


@fail_fast_on_bad_input
def neighbors(context: dict) -> dict:
    return _run(context, "neighbors")


@fail_fast_on_bad_input
def experiments(context: dict) -> dict:
    return _run(context, "experiments")


@fail_fast_on_bad_input
def publish(context: dict) -> dict:
    """Publish the ds, then annotate the task's Asset events (one per ``lookalike.<table>`` outlet). A ds the
    drift gate refuses skips this task (no Asset event: nothing was published) with the refusal in XCom
    (``refused``) for ``approve_drift``, which asks an operator."""
    from lookalike.publish.stage import DriftRefused

    try:
        result = _publish_and_annotate(context, STAGES["publish"].run)
    except DriftRefused as exc:
        from airflow.sdk.exceptions import AirflowSkipException

        if not config_for(context).publish.ask_approval:
            raise
        ds = partition_date(context)
        staged = str(_warehouse(context).work(ds, "publish_staging"))
        context["ti"].xcom_push(key="refused", value={"ds": ds, "why": str(exc), "breaches": exc.breaches,
                                                      "staged": staged})
        log.warning("publish %s refused by the drift gate; approve_drift asks an operator: %s", ds, exc)
        raise AirflowSkipException(f"refused by the drift gate, waiting for approve_drift: {exc}") from exc
    _night_metrics(context)
    return result


@fail_fast_on_bad_input
def publish_accepted(context: dict) -> dict:
    """Publish a ds the drift gate refused and an operator approved (``approve_drift``), with the drift accepted
    and who approved it, and when, in the run record."""
    answer = context["ti"].xcom_pull(task_ids="approve_drift") or {}
    user = answer.get("responded_by_user") or {}
    approval = {"by": user.get("name") or user.get("id"), "at": str(answer.get("responded_at")),
                "chosen": answer.get("chosen_options")}
    context["params"] = {**(context.get("params") or {}), "accept_drift": True}
    result = _publish_and_annotate(context, lambda cfg, ds: STAGES["publish"].run(cfg, ds, approval=approval))
    _night_metrics(context)
    return result


def _warehouse(context: dict):
    from lookalike.storage import Warehouse

    return Warehouse.of(config_for(context))


def _night_metrics(context: dict) -> None:
    """The published night's gauges (pipelines/orchestration/metrics.py), from its run record."""
    import json

    from lookalike.orchestration import metrics

    ds, wh = partition_date(context), _warehouse(context)
    stats = wh.work(ds, "embed_stats.json")
    metrics.emit(metrics.published(wh.run_record(ds) or {}, json.loads(stats.read_text()) if stats.exists() else None))


def _publish_and_annotate(context: dict, publish_fn) -> dict:
    """Run ``publish_fn(cfg, ds)``; each outlet ``lookalike.<table>`` it published gets the ds, run
    id, rows and location as its event's extra."""
    ds = partition_date(context)
    result = publish_fn(config_for(context), ds)

    def extra(name: str) -> dict | None:
        table = name.removeprefix("lookalike.")
        if table not in result["rows"]:
            return None
        return {"ds": ds, "run_id": result["run_id"], "rows": result["rows"][table],
                "location": _warehouse(context).partition_location(table, ds, result["run_id"])}

    _annotate_outlets(context, extra)
    return result


@fail_fast_on_bad_input
def userrec(context: dict) -> dict:
    result = _run(context, "userrec", no_publish=True)  # publish_user_recs is a task of its own
    return {k: v for k, v in result.items() if k not in ("metrics", "published")} | \
        {"multimodal": result["metrics"].get("multimodal")}


@fail_fast_on_bad_input
def publish_user_recs(context: dict) -> dict:
    """Publish the ds's user recommendations, then annotate the task's Asset events."""
    from lookalike.publish.stage import publish_user_recs as publish

    return _publish_and_annotate(context, publish)


@fail_fast_on_bad_input
def handoff(context: dict, feed: str) -> dict:
    """Hand the ds's published ``feed`` (items, users) to the online stores; a store that is down fails
    this task alone (transient: retried with backoff), the published tables stand."""
    from lookalike.orchestration import metrics

    result = _run(context, "handoff", users=feed == "users")
    metrics.emit(metrics.served(result, feed))
    return result


def hour_of(context: dict) -> str:
    """The time an intraday run applies the changes up to: the ``as_of`` param, else the run's logical date
    (a scheduled run: on the hour), else when it was triggered."""
    from lookalike.intraday.stage import as_of_text

    params = context.get("params") or {}
    run = context.get("dag_run")
    return as_of_text(params.get("as_of") or context.get("logical_date") or getattr(run, "run_after", None))


@fail_fast_on_bad_input
def intraday(context: dict, step: str) -> dict:
    """One step of an intraday hour (update, publish, handoff) for the run's ``as_of``."""
    from lookalike.intraday import stage

    run = {"update": stage.run_hour, "publish": stage.publish_hour, "handoff": stage.handoff_hour}[step]
    from lookalike.orchestration import metrics

    result = run(config_for(context), hour_of(context))
    if step == "publish" and "skipped" not in result:
        _annotate_outlets(context, lambda name: {key: result[key] for key in ("night", "as_of", "run_id", "rows")})
    metrics.emit(metrics.hour(result) if step == "update" else metrics.served(result, "items") if step == "handoff"
                 else {})
    return result


@fail_fast_on_bad_input
def report(context: dict) -> dict:
    from lookalike.publish.report import build_report

    return {"report": str(build_report(config_for(context), partition_date(context)))}
