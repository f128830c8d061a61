"""Argument parsing, logging and error reporting shared by every job."""
from __future__ import annotations

import argparse
import json
import logging
import os
from datetime import date
from typing import Callable

from pipelines.config import load_config
from pipelines.errors import report
from pipelines.launch import write_result


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("faiss.loader", "py4j", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def iso_date(text: str) -> str:
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date in YYYY-MM-DD form") from None


def stage_parser(stage: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"lookalike {stage}", description=description)
    parser.add_argument("--config", help="YAML config file (default: the embedded default)")
    parser.add_argument("--ds", required=True, type=iso_date, help="partition date, YYYY-MM-DD")
    return parser


def run_stage(stage: str, description: str, fn: Callable, argv: list[str] | None) -> int:
    """Parse ``--config/--ds``, run ``fn(cfg, ds)``, print its result as JSON."""
    args = stage_parser(stage, description).parse_args(argv)
    setup_logging()
    try:
        result = fn(load_config(args.config), args.ds)
    except Exception as exc:  # bad input (2) and transient failures (75) as one line; a bug re-raised
        return report(f"lookalike {stage}", exc)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one result for the whole job
        print(json.dumps(result, indent=2, default=str))
        write_result(result)  # to the DAG task that launched this job, if one did
    return 0
