"""What each Airflow task calls: resolve the partition date and the config, run one stage.

DAG files import this module inside their tasks, never at parse time. Tasks exchange URIs and
small JSON-able dicts through XCom, never data.
"""
from __future__ import annotations

import logging
from datetime import date

from pipelines.config import load_config

log = logging.getLogger("lookalike")


def partition_date(context: dict) -> str:
    """The ds a task works on: the ``ds`` param when given (manual triggers have no logical
    date), else the run's logical date."""
    params = context.get("params") or {}
    ds = params.get("ds") or context.get("ds")
    if not ds:
        raise ValueError("no partition date: trigger the DAG with a logical date or the param ds=YYYY-MM-DD")
    date.fromisoformat(ds)  # a clear error for a malformed param
    return ds


def extract(context: dict) -> dict:
    from pipelines.extract.stage import run_extract

    return run_extract(load_config(), partition_date(context))


def train(context: dict) -> dict:
    from pipelines.train.stage import run_train

    return run_train(load_config(), partition_date(context))


def evaluate(context: dict, model_uri: str) -> dict:
    from pipelines.evaluate.stage import run_evaluate

    return run_evaluate(load_config(), partition_date(context), model_uri)


def embed(context: dict) -> dict:
    from pipelines.embed.stage import run_embed

    return run_embed(load_config(), partition_date(context))


def neighbors(context: dict) -> dict:
    from pipelines.neighbors.stage import run_neighbors

    return run_neighbors(load_config(), partition_date(context))


def publish(context: dict) -> dict:
    from pipelines.publish.stage import run_publish

    return run_publish(load_config(), partition_date(context))
