"""What each Airflow task calls: resolve the partition date and the config, run one stage.

DAG files import this module inside their tasks, never at parse time. Tasks exchange URIs and
small JSON-able dicts through XCom, never data.
"""
from __future__ import annotations

import functools
import logging
from datetime import date

from pipelines.config import load_config
from pipelines.errors import LookalikeError

log = logging.getLogger("lookalike")


def fail_fast_on_bad_input(fn):
    """A ``LookalikeError`` (bad input, failed check) fails the task at once: retrying cannot help.

    Anything else (a lost connection, a killed worker) goes through the DAG's retries.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LookalikeError as exc:
            from airflow.sdk.exceptions import AirflowFailException

            log.error("%s: %s", exc.__class__.__name__, exc)
            raise AirflowFailException(f"{exc.__class__.__name__}: {exc}") from exc

    return wrapper


def partition_date(context: dict) -> str:
    """The ds a task works on: the ``ds`` param when given (manual triggers have no logical
    date), else the run's logical date."""
    params = context.get("params") or {}
    ds = params.get("ds") or context.get("ds")
    if not ds:
        raise LookalikeError("no partition date: trigger the DAG with a logical date or the param ds=YYYY-MM-DD")
    try:
        date.fromisoformat(ds)
    except ValueError:
        raise LookalikeError(f"partition date {ds!r} is not YYYY-MM-DD") from None
    return ds


@fail_fast_on_bad_input
def extract(context: dict) -> dict:
    from pipelines.extract.stage import run_extract

    return run_extract(load_config(), partition_date(context))


@fail_fast_on_bad_input
def train(context: dict) -> dict:
    from pipelines.train.stage import run_train

    return run_train(load_config(), partition_date(context))


@fail_fast_on_bad_input
def evaluate(context: dict, model_uri: str) -> dict:
    from pipelines.evaluate.stage import run_evaluate

    return run_evaluate(load_config(), partition_date(context), model_uri)


@fail_fast_on_bad_input
def embed(context: dict) -> dict:
    from pipelines.embed.stage import run_embed

    return run_embed(load_config(), partition_date(context))


@fail_fast_on_bad_input
def neighbors(context: dict) -> dict:
    from pipelines.neighbors.stage import run_neighbors

    return run_neighbors(load_config(), partition_date(context))


@fail_fast_on_bad_input
def publish(context: dict) -> dict:
    """Publish the ds, then annotate the task's Asset events (one per ``lookalike.<table>`` outlet)."""
    from pipelines.publish.stage import run_publish

    ds = partition_date(context)
    result = run_publish(load_config(), ds)
    task = context.get("task")
    for asset in getattr(task, "outlets", None) or []:
        table = asset.name.removeprefix("lookalike.")
        if table in result["rows"]:
            context["outlet_events"][asset].extra = {
                "ds": ds, "run_id": result["run_id"], "rows": result["rows"][table],
                "location": f"{result['warehouse']}/{table}/ds={ds}/run={result['run_id']}"}
    return result


@fail_fast_on_bad_input
def report(context: dict) -> dict:
    from pipelines.report import build_report

    return {"report": str(build_report(load_config(), partition_date(context)))}
