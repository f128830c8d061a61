"""The stage entrypoints: what ``lookalike <stage>``, ``python -m lookalike.jobs.<stage>``, ``spark-submit``,
``torchrun`` and the Airflow tasks (``tasks.py``) run. One table, ``STAGES``, names each stage, its help
and the function it calls; ``jobs/`` holds a three-line file per stage over it, so a job can be
launched by file or module."""
from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import date
from typing import Callable

from lookalike.errors import report


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("faiss.loader", "py4j", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def iso_date(text: str) -> str:
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date in YYYY-MM-DD form") from None


def _extract(cfg, ds):
    from lookalike.extract.stage import run_extract

    return run_extract(cfg, ds)


def _train(cfg, ds):
    from lookalike.train.stage import run_train

    return run_train(cfg, ds)


def _evaluate(cfg, ds, model_uri: str | None = None):
    """``model_uri`` (the DAG's, from its train task), else the model trained for ds, else production."""
    from lookalike import registry
    from lookalike.evaluate.stage import run_evaluate
    from lookalike.storage import ModelStore

    if model_uri is None:
        store = ModelStore.at(cfg.models)
        trained = [v["version"] for v in registry.list_versions(store) if v.get("snapshot", {}).get("ds") == ds]
        version = trained[-1] if trained else registry.feature_model(store)[0]
        model_uri = str(store.version_dir(version))
    return run_evaluate(cfg, ds, model_uri)


def _embed(cfg, ds):
    from lookalike.embed.stage import run_embed

    return run_embed(cfg, ds)


def _neighbors(cfg, ds, full: bool = False):
    from lookalike.neighbors.stage import run_neighbors

    return run_neighbors(cfg, ds, full=full)


def _experiments(cfg, ds):
    from lookalike.experiments.stage import run_experiments

    return run_experiments(cfg, ds)


def _publish(cfg, ds, accept_drift: bool = False, approval: dict | None = None):
    """``accept_drift`` reaches the stage as the config override ``publish.accept_drift`` (``main``)."""
    from lookalike.publish.stage import run_publish

    return run_publish(cfg, ds, approval=approval)


def _userrec(cfg, ds, no_publish: bool = False):
    from lookalike.publish.stage import publish_user_recs
    from lookalike.userrec.stage import run_userrec

    result = run_userrec(cfg, ds)
    return {**result, "published": None if no_publish else publish_user_recs(cfg, ds)}


def _handoff(cfg, ds, users: bool = False):
    from lookalike.online.handoff import run_handoff

    return run_handoff(cfg, ds, "users" if users else "items")


@dataclass(frozen=True)
class Stage:
    name: str
    description: str
    run: Callable  # (cfg, ds, **options) -> JSON-able result; the Airflow tasks and the CLI both call it
    flags: dict = field(default_factory=dict)  # extra store_true flags: "--flag" -> help, passed as options


STAGES = {stage.name: stage for stage in [
    Stage("extract", "Extract the snapshot, catalogue and interaction log of one ds from the source. Photos are "
          "decoded on Spark from extract.spark_min_rows listings on (spark-submit jobs/extract.py).", _extract),
    Stage("train", "Fine-tune SigLIP on one ds's snapshot and register the result as a candidate model. "
          "Data-parallel: torchrun --nproc_per_node N -m lookalike.jobs.train --ds YYYY-MM-DD (one rank per GPU; gloo on "
          "CPU). A rerun of the same ds and config resumes from its last checkpoint, or reuses the finished "
          "model.", _train),
    Stage("evaluate", "Score a model against the baselines on one ds's interaction log; promote it if it wins. "
          "Evaluates the model trained for this ds (lookalike train --ds), else production, else the newest "
          "candidate.", _evaluate),
    Stage("embed", "Embed one ds's active catalogue with the serving model, on Spark (spark.master; "
          "spark-submit jobs/embed.py).", _embed),
    Stage("neighbors", "Build one ds's top-k neighbour table from its embeddings with FAISS: updated from the "
          "previous night's lists when little changed (neighbors.incremental_max_change), else every item searched.",
          _neighbors, {"--full": "search every item, whatever changed"}),
    Stage("experiments", "For each experiment running on one ds (experiments.*): every arm's neighbour table "
          "(item_neighbors_variants), the arms and their hash buckets (experiment_variants) and the analysis of "
          "the logged events so far (ab_results), for publish. Nothing when no experiment runs.", _experiments),
    Stage("publish", "Check one ds's outputs and publish them atomically; a failed check publishes nothing. "
          "The structural checks (k neighbours per item, descending scores, unit embeddings …) and the gate "
          "against the previous published day (rows, coverage, score distribution, neighbour overlap for "
          "unchanged photos: publish.* bounds) must pass.", _publish,
          {"--accept-drift": "publish a ds beyond the drift bounds (the run record says so)"}),
    Stage("userrec", "Train and score the user model for one ds, then publish its recommendations and metrics: "
          "the PixRec-style model and the variants it is compared with (userrec.variants), user_recommendations "
          "and the userrec_* rows of eval_metrics, published atomically.", _userrec,
          {"--no-publish": "leave the outputs in the work area"}),
    Stage("handoff", "Hand one ds's published lists to the online stores (serving.sinks): item_neighbors and "
          "the experiment arms (or, with --users, user_recommendations) written as a new generation, checked "
          "against the published rows, switched live atomically; older generations beyond "
          "serving.keep_generations removed.", _handoff,
          {"--users": "hand off the user recommendations (lookalike_user_recs' feed) instead of the item lists"}),
]}


def stage_parser(stage: Stage) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"lookalike {stage.name}", description=stage.description)
    parser.add_argument("--config", help="YAML config file (default: the embedded default)")
    parser.add_argument("--ds", required=True, type=iso_date, help="partition date, YYYY-MM-DD")
    for flag, help_text in stage.flags.items():
        parser.add_argument(flag, action="store_true", help=help_text)
    return parser


def main(name: str, argv: list[str] | None = None) -> int:
    """Parse ``--config/--ds`` and the stage's flags, run it, print its result as JSON."""
    from lookalike.config import load_config
    from lookalike.orchestration.launch import write_result

    stage = STAGES[name]
    args = stage_parser(stage).parse_args(argv)
    setup_logging()
    if getattr(args, "accept_drift", False):
        os.environ["LOOKALIKE_PUBLISH__ACCEPT_DRIFT"] = "true"  # a config override, like any other
    try:
        options = {name: True for name in (flag.lstrip("-").replace("-", "_") for flag in stage.flags)
                   if getattr(args, name)}
        result = stage.run(load_config(args.config), args.ds, **options)
    except Exception as exc:  # bad input (2) and transient failures (75) as one line; a bug re-raised
        return report(f"lookalike {name}", exc)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one result for the whole job
        print(json.dumps(result, indent=2, default=str))
        write_result(result)  # to the DAG task that launched this job, if one did
    return 0
