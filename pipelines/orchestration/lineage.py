"""What each task reads and writes, as real datasets, for OpenLineage (the ``apache-airflow-providers-openlineage``
provider, in the ``airflow`` extra).

Every Lookalike task is a :class:`~lookalike.orchestration.dag_common.LookalikeTask` (``dag_common.task``), whose
``get_openlineage_facets_on_start`` and ``..._on_complete`` the provider calls (from a forked process): they name
the datasets of :data:`DATASETS` where they live, from the config the task ran with (its Connections applied,
kept by ``remember``; before the task ran, the config and the environment alone), following OpenLineage's naming: the listings database
and its tables (``postgres://host:port`` + ``db.schema.table``; a SQLite file: ``sqlite://<path>`` + the table),
the image store and the model store (``file`` + the path, or ``s3://bucket`` + the key), each stage's work-area
output, each published table where it lives (with its schema facet, from :mod:`lookalike.schemas`), and the
online stores. No credential is part of a name. Without the provider nothing here is imported.
"""
from __future__ import annotations

import os
from pathlib import Path

# (dag, task) → (inputs, outputs). A name is "source:<table>", "images", "models", "work:<output>",
# "table:<published table>", "published:<dag>" (every table that DAG's publish commits) or "store:<table>".
DATASETS: dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]] = {
    ("lookalike_extract", "extract"): (("source:listings", "source:interactions", "images"),
                                       ("work:listings_snapshot", "work:catalog", "work:interactions",
                                        "work:quarantine")),
    ("lookalike_finetune", "train"): (("work:listings_snapshot", "models"), ("models",)),
    ("lookalike_finetune", "evaluate"): (("work:interactions", "work:catalog", "models"),
                                         ("work:eval_metrics", "models")),
    ("lookalike_nightly", "embed"): (("work:catalog", "models"), ("work:item_embeddings",)),
    ("lookalike_nightly", "neighbors"): (("work:item_embeddings", "work:catalog", "work:neighbor_lists"),
                                         ("work:item_neighbors", "work:neighbor_lists")),
    ("lookalike_nightly", "experiments"): (("work:item_embeddings", "work:catalog", "work:interactions", "models"),
                                           ("work:item_neighbors_variants", "work:ab_results")),
    ("lookalike_nightly", "publish"): (("work:listings_snapshot", "work:catalog", "work:quarantine",
                                        "work:item_embeddings", "work:item_neighbors", "work:eval_metrics",
                                        "work:item_neighbors_variants", "work:ab_results"),
                                       ("published:lookalike_nightly",)),
    ("lookalike_nightly", "publish_accepted"): (("work:listings_snapshot", "work:catalog", "work:quarantine",
                                                 "work:item_embeddings", "work:item_neighbors", "work:eval_metrics",
                                                 "work:item_neighbors_variants", "work:ab_results"),
                                                ("published:lookalike_nightly",)),
    ("lookalike_nightly", "handoff"): (("table:item_neighbors", "table:item_neighbors_variants"),
                                       ("store:item_neighbors", "store:item_neighbors_variants")),
    ("lookalike_nightly", "report"): (("table:item_neighbors", "table:catalog", "table:eval_metrics"),
                                      ("work:report",)),
    ("lookalike_user_recs", "userrec"): (("work:interactions", "work:item_embeddings", "work:listings_snapshot",
                                          "models"), ("work:user_recommendations", "work:user_history",
                                                      "work:userrec_metrics")),
    ("lookalike_user_recs", "publish"): (("work:user_recommendations", "work:user_history",
                                          "work:userrec_metrics"), ("published:lookalike_user_recs",)),
    ("lookalike_user_recs", "handoff"): (("table:user_recommendations",), ("store:user_recommendations",)),
    ("lookalike_intraday", "update"): (("source:listings", "images", "work:neighbor_lists", "work:item_embeddings"),
                                       ("work:intraday",)),
    ("lookalike_intraday", "publish"): (("work:intraday",), ("published:lookalike_intraday",)),
    ("lookalike_intraday", "handoff"): (("table:item_neighbors_intraday",), ("store:item_neighbors",)),
}


# The task's environment with its Connections applied, kept by the task (``remember``) for the events the
# provider emits from a forked process after the task ran: a Connection cannot be looked up from there.
_RESOLVED: dict[str, dict] = {}


def remember(environ: dict[str, str]) -> None:
    """Keep the task's resolved environment (``tasks.environ_for``) for its COMPLETE event's datasets. The
    START event, emitted before the task runs, names them from the config and the environment alone."""
    _RESOLVED["environ"] = dict(environ)


def _place(location: str) -> tuple[str, str]:
    """(namespace, name) of a directory or an s3:// URI, by OpenLineage's naming."""
    if location.startswith("s3://"):
        bucket, _, key = location.removeprefix("s3://").partition("/")
        return f"s3://{bucket}", key.strip("/") or "/"
    return "file", str(Path(location).resolve())


def _source(url: str, table: str) -> tuple[str, str]:
    import sqlalchemy as sa

    parsed = sa.engine.make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return f"sqlite://{Path(parsed.database or '').resolve()}", table
    scheme = "postgres" if backend.startswith("postgres") else backend
    return f"{scheme}://{parsed.host}:{parsed.port or 5432}", f"{parsed.database}.public.{table}"


def _store(cfg, table: str) -> list[tuple[str, str]]:
    out = []
    for sink in cfg.serving.sink_names:
        url = getattr(cfg.serving, sink).url
        if not url:
            continue
        if sink == "postgres":
            namespace, name = _source(url.replace("postgresql://", "postgresql+psycopg://"), table)
            out.append((namespace, name.replace(".public.", f".{cfg.serving.postgres.schema}.")))
        else:
            import urllib.parse

            parsed = urllib.parse.urlsplit(url)
            out.append((f"redis://{parsed.hostname}:{parsed.port or 6379}", f"{cfg.serving.redis.prefix}:{table}"))
    return out


def resolve(cfg, name: str) -> list[tuple[str, str, str | None]]:
    """The datasets a name of :data:`DATASETS` stands for: (namespace, name, published table for its schema)."""
    from lookalike import tables
    from lookalike.storage import Warehouse

    kind, _, what = name.partition(":")
    if kind == "source":
        return [(*_source(cfg.source.url, what), None)]
    if kind == "images":
        return [(*_place(cfg.source.images), None)]
    if kind == "models":
        return [(*_place(cfg.models), None)]
    if kind == "work":
        return [(*_place(str(Warehouse.of(cfg).work_root / what)), None)]
    if kind == "published":
        return [item for table in tables.published_by(what) for item in resolve(cfg, f"table:{table}")]
    if kind == "table":
        return [(*_place(f"{cfg.warehouse.rstrip('/')}/{what}"), what)]
    if kind == "store":
        return [(namespace, dataset, None) for namespace, dataset in _store(cfg, what)]
    raise ValueError(f"unknown dataset {name!r}")


def _schema_facet(table: str):
    from openlineage.client.facet_v2 import schema_dataset

    from lookalike import schemas

    return schema_dataset.SchemaDatasetFacet(fields=[
        schema_dataset.SchemaDatasetFacetFields(name=f.name, type=str(f.type)) for f in schemas.PUBLISHED[table]])


def operator_lineage(dag_id: str, task_id: str):
    """The provider's ``OperatorLineage`` of a task: its inputs and outputs where they live now."""
    from airflow.providers.openlineage.extractors.base import OperatorLineage
    from openlineage.client.event_v2 import Dataset

    from lookalike.config import load_config

    inputs, outputs = DATASETS.get((dag_id, task_id), ((), ()))
    cfg = load_config(environ=_RESOLVED.get("environ") or os.environ)

    def datasets(names):
        found = {}
        for name in names:
            for namespace, dataset, table in resolve(cfg, name):
                facets = {"schema": _schema_facet(table)} if table else {}
                found[(namespace, dataset)] = Dataset(namespace=namespace, name=dataset, facets=facets)
        return list(found.values())

    return OperatorLineage(inputs=datasets(inputs), outputs=datasets(outputs))
