"""``lookalike ab-report`` and ``lookalike simulate-ab``: an experiment read from the source's own
log, and the sample's front end played to produce one.

The report reads the experiment's events straight from the source (``sql/extract/
interactions.sql``, from the experiment's start), so it covers every day logged, not only the
nightly extract's window; prices come from the newest published catalogue and snapshot.
"""
from __future__ import annotations

import logging
from datetime import date, timedelta
from pathlib import Path

import pandas as pd

from lookalike import schemas
from lookalike.config import Config
from lookalike.errors import LookalikeError
from lookalike.experiments import analysis, simulate
from lookalike.assignment import Experiment, experiment
from lookalike.extract.source import optional_columns, stream_source
from lookalike.storage import Warehouse

log = logging.getLogger(__name__)


def published_prices(wh: Warehouse) -> dict[str, float]:
    """item_id → price from the newest published snapshot and catalogue (empty when none)."""
    latest = {table: wh.latest_ds(table) for table in ("listings_snapshot", "catalog")}
    return analysis.price_map(wh.read_partition(table, ds, columns=["item_id", "price"])
                              for table, ds in latest.items() if ds)


def logged_events(cfg: Config, exp: Experiment, before: str | None) -> pd.DataFrame:
    """The experiment's events in the source's interactions, from its start to ``before`` (all when None)."""
    optional = optional_columns(cfg.source.url, "interactions", schemas.INTERACTIONS_OPTIONAL)
    if optional["experiment"] == "null" or optional["variant"] == "null":
        raise LookalikeError("the source's interactions table has no experiment and variant columns, so no event is "
                             "attributed to an experiment: log them (docs/experiments.md), or simulate a test on the "
                             "sample with `lookalike simulate-ab`")
    columns = [f.name for f in schemas.INTERACTIONS]
    params = {"window_start": f"{exp.start or '0001-01-01'}T00:00:00", "window_end": f"{before or '9999-12-31'}T00:00:00"}
    sql_dir = Path(cfg.source.extract_sql) if cfg.source.extract_sql else None
    chunks = [chunk[chunk["experiment"] == exp.name]
              for chunk in stream_source(cfg.source.url, "interactions.sql", params, sql_dir,
                                         expected=columns, optional=optional)]
    return pd.concat(chunks, ignore_index=True)[columns]


def ab_report(cfg: Config, name: str, ds: str | None = None) -> tuple[Experiment, list[dict]]:
    """The ab_results rows of experiment ``name`` from the source's log before ``ds`` (all of it by default)."""
    exp = experiment(cfg, name)
    events = logged_events(cfg, exp, ds)
    label = ds or (date.today() + timedelta(days=1)).isoformat()
    return exp, analysis.analyse(events, exp, ds=label, prices=published_prices(Warehouse.of(cfg)), ab=cfg.ab)


def describe(exp: Experiment, rows: list[dict], cfg: Config) -> str:
    """The report's heading, table and how to read it."""
    if not rows:
        return (f"Experiment {exp.name}: no module impression is logged for it yet (interactions with experiment = "
                f"{exp.name!r} and source_item_id set).")
    arms = ", ".join(f"{a.variant}{' (control)' if a.is_control else ''} serves {a.serve}, {a.share:.0%}"
                     for a in exp.arms)
    return "\n".join([
        f"Experiment {exp.name}: {arms}; events {rows[0]['first_day']} to {rows[0]['last_day']}.",
        f"CTR = module clicks / module impressions; conversion = module clicks bought within "
        f"{cfg.ab.conversion_window_hours:g} h / module clicks; revenue per user from catalogue prices.",
        "Lifts against control with 95% intervals by the delta method over users (the unit of assignment); "
        f"sample-ratio χ² p = {rows[0]['srm_p_value']:.3g}.",
        "",
        analysis.format_table(rows),
    ])


def simulate_ab(cfg: Config, name: str, *, days: int, ds: str | None = None, seed: int = 0,
                attributes: Path | None = None, calibrate: int = 0, progress=print) -> dict:
    """Play ``days`` days of the sample's front end for experiment ``name`` from its published ``ds``
    and write the log into the source; with ``calibrate`` K, run K seeded simulations in memory
    instead and count how often the CTR lift's 95% interval covers 0."""
    site = simulate.load_site(cfg, name, ds, attributes)
    read_from = "warehouse"
    if cfg.serving.sink_names:  # a store is configured: show what the site would read from it
        from lookalike.online.handoff import live_modules

        read_from, modules = live_modules(cfg, name, [arm.variant for arm in site.experiment.arms], site.pages,
                                          simulate.MODULE_SLOTS)
        site = simulate.with_modules(site, modules)
        progress(f"simulate-ab: the arms' lists are read from the online store {read_from}, as the site reads them")
    users = simulate.source_users(cfg.source.url)
    if not users:
        raise LookalikeError("the source's interactions table has no users to play")
    start = site.ds
    if not calibrate:
        frame = simulate.simulate(site, users, days=days, seed=seed, start=start)
        written = simulate.write_log(cfg.source.url, frame, name, start, days)
        counts = frame[frame["source_item_id"].notna() | (frame["event"] == "purchase")]["event"].value_counts()
        end = (date.fromisoformat(start) + timedelta(days=days)).isoformat()
        return {"experiment": name, "neighbours_of": site.ds, "lists_from": read_from, "days": [start, end],
                "users": len(users),
                "events": written, **{e: int(counts.get(e, 0)) for e in ("impression", "click", "purchase")},
                "by_variant": frame.drop_duplicates("user_id")["variant"].value_counts().to_dict()}
    prices = published_prices(Warehouse.of(cfg))
    covered, lifts = 0, []
    for i in range(calibrate):
        frame = simulate.simulate(site, users, days=days, seed=seed + i, start=start)
        rows = analysis.analyse(frame, site.experiment, ds=start, prices=prices, ab=cfg.ab)
        ctr = next(r for r in rows if r["metric"] == "ctr" and not r["is_control"])
        lifts.append(ctr["lift"])
        covered += ctr["lift_low"] <= 0 <= ctr["lift_high"]
        if (i + 1) % max(1, calibrate // 5) == 0:
            progress(f"  runs: {i + 1}/{calibrate}, interval covered 0 in {covered}")
    return {"experiment": name, "runs": calibrate, "seeds": [seed, seed + calibrate - 1], "covered_zero": covered,
            "mean_ctr_lift": sum(lifts) / len(lifts)}
