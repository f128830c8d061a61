"""The ``lookalike`` command line. Every verb has ``--help``; errors say what to fix and exit non-zero."""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
import time
from datetime import date, datetime, timezone
from pathlib import Path

from lookalike import tables
from lookalike.errors import LookalikeError, report
from lookalike.orchestration.jobs import STAGES, iso_date

def _today() -> str:
    return datetime.now(timezone.utc).date().isoformat()


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def cmd_sample_data(args) -> int:
    from lookalike.sample.marketplace import SampleSpec, generate

    out = Path(args.out)
    print(f"Writing a sample marketplace of {args.items} items and {args.users} users over {args.days} days to {out} …")
    summary = generate(out, SampleSpec(items=args.items, users=args.users, days=args.days, seed=args.seed,
                                       end=date.fromisoformat(args.end) if args.end else None))
    last = date.fromisoformat(summary["end"]).toordinal() - 1
    print(f"Done: {summary['interactions']} interactions up to {date.fromordinal(last)}; source "
          f"{summary['database']}, images {summary['images']}. `lookalike run` will use ds={summary['end']}.")
    if args.load_into or args.upload_images:
        from sqlalchemy.engine import make_url

        from lookalike.sample.load import load_database, upload_images

        if args.load_into:
            counts = load_database(out, args.load_into)
            print(f"Loaded {counts['listings']} listings and {counts['interactions']} interactions into "
                  f"{make_url(args.load_into).render_as_string(hide_password=True)} (source.url)")
        if args.upload_images:
            print(f"Uploaded {upload_images(out / 'images', args.upload_images)} image files to "
                  f"{args.upload_images} (source.images)")
    return 0


def cmd_run(args) -> int:
    from lookalike.config import load_config
    from lookalike.orchestration.orchestrate import PIPELINE, run_pipeline
    from lookalike.tools.summary import run_summary

    cfg = load_config(args.config)
    ds = args.ds or _default_ds(cfg)
    dags = [dag_id for dag_id, _ in PIPELINE]
    print(f"Running {', '.join(dags[:-1])} and {dags[-1]} for ds={ds} through Airflow "
          f"(logs: {cfg.airflow.home}/logs/) …", flush=True)
    started, timings = time.monotonic(), []
    run_pipeline(cfg, ds, config_path=args.config, echo=lambda line: print(line, flush=True), timings=timings)
    print()
    print(run_summary(cfg, ds, config_path=args.config))
    print()
    print(_where_the_time_went(timings, time.monotonic() - started))
    return 0


def _where_the_time_went(timings, total: float) -> str:
    """The run's wall time by task, slowest first, with Airflow's own share of it."""
    from lookalike.tools.summary import format_table

    rows = sorted(timings, key=lambda t: -t.seconds)
    return (f"Where the time went ({total:.0f} s in all; `(airflow)`: starting each DAG run and finishing it, "
            "around its tasks):\n" + format_table(["dag", "task", "seconds", "share"], [
                (t.dag_id, t.task, f"{t.seconds:.1f}", f"{t.seconds / total:.0%}") for t in rows if t.seconds >= 0.5]))


def _default_ds(cfg) -> str:
    """Today (UTC), or the day the sample ends when the embedded sample marketplace is the source."""
    sample = Path(cfg.source.url.removeprefix("sqlite:///")).with_name("sample.json")
    if cfg.source.url.startswith("sqlite:///") and sample.exists():
        return json.loads(sample.read_text())["end"]
    return _today()


def cmd_summary(args) -> int:
    from lookalike.config import load_config
    from lookalike.storage import Warehouse
    from lookalike.tools.summary import run_summary

    cfg = load_config(args.config)
    ds = args.ds or Warehouse.of(cfg).latest_ds("item_neighbors")
    if not ds:
        raise LookalikeError(f"nothing published in {cfg.warehouse} yet: run `lookalike run` first")
    print(run_summary(cfg, ds, config_path=args.config))
    return 0


def cmd_report(args) -> int:
    from lookalike.config import load_config
    from lookalike.publish.report import build_report
    from lookalike.storage import Warehouse

    cfg = load_config(args.config)
    ds = args.ds or Warehouse.of(cfg).latest_ds("item_neighbors")
    if not ds:
        raise LookalikeError(f"nothing published in {cfg.warehouse} yet: run `lookalike run` first")
    out = build_report(cfg, ds, Path(args.out) if args.out else None, samples=args.samples, shown=args.shown)
    print(f"Report of ds={ds}: {out.resolve()}  (open it in a browser; it is one self-contained file)")
    return 0


def cmd_ab_report(args) -> int:
    from lookalike.config import load_config
    from lookalike.experiments.readout import ab_report, describe

    cfg = load_config(args.config)
    exp, rows = ab_report(cfg, args.experiment, args.ds)
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        print(describe(exp, rows, cfg))
    return 0


def cmd_simulate_ab(args) -> int:
    from lookalike.config import load_config
    from lookalike.experiments.readout import simulate_ab

    cfg = load_config(args.config)
    if args.freshness:
        return _freshness(cfg, args)
    if not args.experiment:
        raise LookalikeError("simulate-ab needs --experiment NAME (or --freshness: the refresh policies compared)")
    what = f"{args.calibrate} seeded runs in memory" if args.calibrate else "into the source's interactions"
    print(f"Simulating {args.days} days of experiment {args.experiment} on the sample marketplace ({what}) …",
          flush=True)
    result = simulate_ab(cfg, args.experiment, days=args.days, ds=args.ds, seed=args.seed,
                         attributes=Path(args.attributes) if args.attributes else None, calibrate=args.calibrate,
                         progress=lambda line: print(line, flush=True))
    if args.calibrate:
        print(f"The CTR lift's 95% interval covered 0 in {result['covered_zero']} of {result['runs']} runs "
              f"(seeds {result['seeds'][0]}–{result['seeds'][1]}; mean lift {result['mean_ctr_lift']:+.2%}). "
              "An A/A test should cover 0 in about 95% of runs.")
    else:
        arms = ", ".join(f"{v} {n}" for v, n in sorted(result["by_variant"].items()))
        print(f"Logged {result['days'][0]} to {result['days'][1]} (the neighbours of ds={result['neighbours_of']}) for "
              f"{result['users']:,} users ({arms}): {result['impression']:,} module impressions, {result['click']:,} "
              f"clicks, {result['purchase']:,} purchases; {result['events']:,} events in all.\n"
              f"Read it: lookalike ab-report --experiment {args.experiment}"
              + (f" --config {args.config}" if args.config else ""))
    return 0


def _freshness(cfg, args) -> int:
    from lookalike.experiments.freshness import POLICIES, freshness
    from lookalike.orchestration.jobs import setup_logging
    from lookalike.tools.summary import format_table

    setup_logging(logging.WARNING)
    result = freshness(cfg, seed=args.seed, progress=lambda line: print(line, flush=True))
    if args.format == "json":
        print(json.dumps(result, indent=2))
        return 0
    print(f"\nThe day {result['day']} on the sample's site ({result['listed']} listings arrived, {result['sold']} "
          "sold), the same page views under each refresh policy:")
    print(format_table(["refresh", "page views", "no module (listing younger than the refresh)", "module slots",
                        "slots showing an item already sold"],
                       [(p, result[p]["views"], f"{result[p]['no_module']} ({result[p]['no_module_share']:.2%})",
                         result[p]["slots"], f"{result[p]['sold_slots']} ({result[p]['sold_slot_share']:.2%})")
                        for p in POLICIES]))
    return 0


def cmd_ddl(args) -> int:
    from lookalike.config import load_config
    from lookalike.tools.ddl import render_ddl
    from lookalike.storage import Warehouse

    print(render_ddl(Warehouse.of(load_config(args.config)), args.engine, schema=args.schema, catalog=args.catalog),
          end="")
    return 0


def cmd_query(args) -> int:
    from lookalike.config import load_config
    from lookalike.query import run_query
    from lookalike.storage import Warehouse
    from lookalike.tools.summary import format_table

    if bool(args.sql) == bool(args.file):
        raise LookalikeError("give either a SQL string or --file FILE")
    sql = Path(args.file).read_text() if args.file else args.sql
    variables = {}
    for item in args.var or []:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise LookalikeError(f"--var expects NAME=VALUE, got {item!r}")
        variables[name] = value
    cfg = load_config(args.config)
    columns, rows = run_query(Warehouse.of(cfg), sql, variables)
    if args.format == "json":
        print(json.dumps([dict(zip(columns, r)) for r in rows], default=str, indent=2))
    elif args.format == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(columns)
        writer.writerows(rows)
        print(buf.getvalue(), end="")
    else:
        print(format_table(columns, rows))
    return 0


def cmd_models(args) -> int:
    from lookalike import registry
    from lookalike.config import load_config
    from lookalike.storage import ModelStore
    from lookalike.tools.summary import format_table

    store = ModelStore.at(load_config(args.config).models)
    if args.action == "list":
        rows = [(v["version"], v["stage"], v.get("architecture"), v.get("snapshot", {}).get("ds"),
                 v.get("eval", {}).get("ndcg@5"), v.get("metrics", {}).get("val", {}).get("recall@1"),
                 v.get("metrics", {}).get("val", {}).get("recall@5"), v.get("parent"))
                for v in registry.list_versions(store)]
        if not rows:
            print(f"no models registered under {store.root}")
        else:
            print(format_table(["version", "stage", "architecture", "snapshot ds", "nDCG@5", "val R@1", "val R@5",
                                "parent"], rows))
    elif args.action == "promote":
        if not args.version:
            raise LookalikeError("`lookalike models promote` needs a VERSION (see `lookalike models list`)")
        registry.promote(store, args.version)
        print(f"{args.version} is now the production model")
    else:
        print(f"production model rolled back to {registry.rollback(store)}")
    return 0


def cmd_similar(args) -> int:
    from lookalike.config import load_config
    from lookalike.online.handoff import similar
    from lookalike.tools.summary import format_table

    found = similar(load_config(args.config), args.item_id, experiment=args.experiment, user=args.user,
                    sink=args.sink)
    if args.format == "json":
        print(json.dumps(found, indent=2))
        return 0
    arm = f", experiment {found['experiment']} variant {found['variant']}" if found["experiment"] else ""
    print(f"{found['item_id']}: {found['table']} from {found['sink']}, live generation {found['generation']}{arm}")
    print(format_table(["rank", "neighbor_id", "score"],
                       [(n["rank"], n["neighbor_id"], round(n["score"], 4)) for n in found["neighbors"]]))
    return 0


def cmd_serving(args) -> int:
    from lookalike.config import load_config
    from lookalike.online import handoff
    from lookalike.tools.summary import format_table

    cfg = load_config(args.config)
    if not cfg.serving.sink_names:
        raise LookalikeError("no online store is configured: set serving.sinks (postgres, redis) and their URLs "
                             "(docs/serving.md)")
    if args.action == "status":
        return _serving_status(handoff.status(cfg), args.format)
    if args.action == "history":
        rows = handoff.history(cfg, feed=args.feed, sinks=(args.sink,) if args.sink else ())
        if args.format == "json":
            print(json.dumps(rows, indent=2))
            return 0
        print(format_table(["sink", "feed", "at", "generation", "ds", "run", "hour", "replaced", "by"],
                           [(r["sink"], r["feed"], r["at"], r["generation"], r["ds"], r["run_id"], r["as_of"] or "-",
                             r["previous"] if r["previous"] is not None else "-", r["by"]) for r in rows]))
        return 0
    if args.action == "init":
        for store in handoff.init(cfg, grant_to=args.grant):
            print(f"{store}: ready" + (f"; {args.grant} may read it" if args.grant else ""))
        return 0
    if args.to is not None and args.sink is None and len(cfg.serving.sink_names) > 1:
        raise LookalikeError("--to names one store's generation: give --sink too (generation numbers are per store)")
    for r in handoff.rollback(cfg, to=args.to, feed=args.feed, sinks=(args.sink,) if args.sink else ()):
        print(f"{r['sink']}: {r['feed']} now serves generation {r['live']} (ds {r['ds']}); it served {r['was']}")
    return 0


def _serving_status(rows: list[dict], form: str) -> int:
    """Print what every store serves; a store that could not be read is marked, and the exit status is
    then 75 (transient) so a monitor sees it."""
    from lookalike.errors import EXIT_STATUS, TRANSIENT
    from lookalike.tools.summary import format_table

    if form == "json":
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(["sink", "feed", "live generation", "ds", "run", "switched at", "hour applied",
                            "age (h)", "kept"],
                           [(r["sink"], r["feed"], "UNREACHABLE" if "error" in r else r["live"], r["ds"], r["run_id"],
                             r["switched_at"], r["as_of"] or "-", r["age_hours"], ",".join(map(str, r["kept"])) or "-")
                            for r in rows]))
        for store in sorted({r["store"] for r in rows if "error" not in r}):
            print(f"  {store}")
        for r in {r["sink"]: r for r in rows if "error" in r}.values():
            print(f"  {r['sink']}: could not be read: {r['error']}")
    return EXIT_STATUS[TRANSIENT] if any("error" in r for r in rows) else 0


def cmd_intraday(args) -> int:
    from lookalike.config import load_config
    from lookalike.intraday.stage import as_of_text, handoff_hour, publish_hour, run_hour
    from lookalike.orchestration.jobs import setup_logging

    setup_logging()
    cfg = load_config(args.config)
    as_of = as_of_text(args.as_of)
    steps = {"update": lambda: run_hour(cfg, as_of), "publish": lambda: publish_hour(cfg, as_of),
             "handoff": lambda: handoff_hour(cfg, as_of)}
    results = {}
    for name in (steps if args.step == "all" else [args.step]):
        results[name] = steps[name]()
        if name == "update" and "skipped" in results[name]:
            break
    print(json.dumps(results, indent=2, default=str))
    return 0


def cmd_spark_conf(args) -> int:
    from lookalike.config import load_config
    from lookalike.spark import spark_conf

    for key, value in spark_conf(load_config(args.config)).items():
        print(f"--conf {key}={value}")
    return 0


def cmd_dags_folder(args) -> int:
    from lookalike.resources import dags_folder

    print(dags_folder())
    return 0


def cmd_stage(args, rest: list[str]) -> int:
    from lookalike.orchestration.jobs import main as run_stage

    return run_stage(args.command, rest)


def build_parser() -> argparse.ArgumentParser:
    from lookalike.sample.marketplace import SampleSpec

    defaults = SampleSpec()
    parser = argparse.ArgumentParser(prog="lookalike", description=(
        "Nightly 'visually similar items' tables from fine-tuned SigLIP embeddings. "
        "Without --config the embedded default is used (sample marketplace under var/sample, warehouse under "
        "var/warehouse)."))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("sample-data", help="write a sample marketplace (SQLite + images)")
    p.add_argument("--out", required=True, help="output folder (e.g. var/sample)")
    p.add_argument("--items", type=_positive, default=defaults.items)
    p.add_argument("--users", type=_positive, default=defaults.users)
    p.add_argument("--days", type=_positive, default=defaults.days,
                   help="days of listings and interactions")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--end", type=iso_date, help="day after the last day of data (default: today, UTC)")
    p.add_argument("--load-into", metavar="URL", help="also load the listings and interactions into this SQLAlchemy "
                                                      "database (e.g. postgresql+psycopg://…), replacing those tables")
    p.add_argument("--upload-images", metavar="S3_URI", help="also upload the photos to s3://bucket/prefix "
                                                              "(endpoint and credentials from AWS_*)")
    p.set_defaults(func=cmd_sample_data)

    p = sub.add_parser("run", help="run a night through Airflow for one ds: the extract, finetune, nightly and user "
                       "recs DAGs, then the summary")
    p.add_argument("--config", help="YAML config file (default: the embedded default)")
    p.add_argument("--ds", type=iso_date, help="partition date (default: today UTC; the sample's end day "
                                                "on the embedded sample)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("summary", help="print the summary of a published run")
    p.add_argument("--config")
    p.add_argument("--ds", type=iso_date, help="default: the latest published ds")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("query", help="read-only SQL over the published tables (DuckDB)")
    p.add_argument("--config")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--file", help="read the SQL from a file, e.g. sql/analytics/similar_items.sql")
    p.add_argument("--var", action="append", metavar="NAME=VALUE",
                   help="set a SQL variable, read with getvariable('NAME'); repeatable")
    p.add_argument("sql", nargs="?", help=f"the SQL; tables: {', '.join(tables.NAMES)} (latest ds) and "
                                          "<table>_all (every kept ds)")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("report", help="write an HTML gallery of a published run (neighbours, coverage, metrics)")
    p.add_argument("--config")
    p.add_argument("--ds", type=iso_date, help="default: the latest published ds")
    p.add_argument("--out", help="HTML file to write (default: <work_dir>/ds=<ds>/report/index.html)")
    p.add_argument("--samples", type=_positive, default=12, help="query items shown (one per category in turn)")
    p.add_argument("--shown", type=_positive, default=10, help="neighbours shown per query item")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("ab-report", help="an experiment's A/B results from the logged interactions: per variant "
                       "users, impressions, CTR, conversion, revenue per user, lift with 95%% intervals, SRM check")
    p.add_argument("--config")
    p.add_argument("--experiment", required=True, help="its name under experiments: in the config")
    p.add_argument("--ds", type=iso_date, help="read the events before this day (default: every event logged)")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_ab_report)

    p = sub.add_parser("simulate-ab", help="play the sample marketplace's front end for an experiment: N days of "
                       "users shown each variant's published neighbours, logged into the source")
    p.add_argument("--config")
    p.add_argument("--experiment", help="its name under experiments: in the config")
    p.add_argument("--days", type=_positive, default=14, help="days to simulate from the published ds (default 14)")
    p.add_argument("--freshness", action="store_true", help="instead of an experiment: move the day after the "
                   "newest night (listings arrive and sell), run its hours, and compare what shoppers see with "
                   "nightly-only and with hourly lists (docs/pipeline.md#intraday-hours)")
    p.add_argument("--format", choices=["table", "json"], default="table", help="--freshness: how to print it")
    p.add_argument("--ds", type=iso_date, help="the published ds whose neighbours are shown (default: the newest "
                                               "with the experiment)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attributes", help="the sample's hidden_attributes.json (default: beside the source's SQLite file)")
    p.add_argument("--calibrate", type=_positive, metavar="K", help="run K seeded simulations in memory (nothing "
                   "written) and count how often the CTR lift's interval covers 0: an A/A test's calibration")
    p.set_defaults(func=cmd_simulate_ab)

    p = sub.add_parser("ddl", help="print external-table DDL + partition statements for Spark SQL or Trino")
    p.add_argument("--config")
    p.add_argument("--engine", choices=["spark", "trino"], required=True)
    p.add_argument("--schema", default="lookalike", help="schema (database) to create the tables in")
    p.add_argument("--catalog", default="hive", help="Trino catalog of the Hive connector")
    p.set_defaults(func=cmd_ddl)

    for stage in STAGES:
        p = sub.add_parser(stage, help=f"run the {stage} stage for one ds", add_help=False)
        p.set_defaults(func=None)

    p = sub.add_parser("dags-folder", help="print the folder of the installed DAG files (for an existing Airflow's "
                       "AIRFLOW__CORE__DAGS_FOLDER, or to link into it)")
    p.set_defaults(func=cmd_dags_folder)

    p = sub.add_parser("similar", help="one item's live list from the online store, as the site reads it")
    p.add_argument("item_id")
    p.add_argument("--config")
    p.add_argument("--experiment", help="read the arm of this running experiment that --user is assigned to")
    p.add_argument("--user", help="the user whose arm is read (with --experiment)")
    p.add_argument("--sink", choices=["postgres", "redis"], help="the store to read (default: the first of "
                                                                  "serving.sinks)")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_similar)

    p = sub.add_parser("serving", help="the online stores: status (what each serves, how old), history (the "
                       "switches), rollback [--to GENERATION] (undo the last switch), init [--grant ROLE] (create "
                       "the layout; ROLE may read it)")
    p.add_argument("action", choices=["status", "history", "rollback", "init"])
    p.add_argument("--config")
    p.add_argument("--to", type=int, metavar="GENERATION", help="rollback: this generation (default: the one "
                                                                 "live before the last switch)")
    p.add_argument("--sink", choices=["postgres", "redis"], help="rollback, history: this store only (default: "
                                                                  "every one)")
    p.add_argument("--feed", choices=["items", "users"], default="items",
                   help="rollback, history: the item lists (default) or the user recommendations")
    p.add_argument("--grant", metavar="ROLE", help="init: the PostgreSQL role the site reads as (SELECT only)")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_serving)

    p = sub.add_parser("intraday", help="apply what changed in the source since the night (an hour of "
                       "lookalike_intraday): the changed listings embedded, the night's lists updated, published "
                       "as item_neighbors_intraday and written into the online stores' live generation")
    p.add_argument("--config")
    p.add_argument("--as-of", help="apply every change before this UTC time, YYYY-MM-DDTHH:MM[:SS] (default: now)")
    p.add_argument("--step", choices=["all", "update", "publish", "handoff"], default="all",
                   help="one step of the hour, as the DAG's tasks run them (default: all three)")
    p.set_defaults(func=cmd_intraday)

    p = sub.add_parser("spark-conf", help="print the Spark settings of the config as spark-submit --conf flags")
    p.add_argument("--config")
    p.set_defaults(func=cmd_spark_conf)

    p = sub.add_parser("models", help="the model registry: list, promote VERSION, rollback")
    p.add_argument("action", choices=["list", "promote", "rollback"])
    p.add_argument("version", nargs="?")
    p.add_argument("--config")
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if argv and argv[0] in STAGES:  # stage verbs hand their arguments to the job's own parser
        args = argparse.Namespace(command=argv[0])
        return cmd_stage(args, argv[1:])
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:  # bad input (2) and transient failures (75) as one line; a bug re-raised
        return report(f"lookalike {args.command}", exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
