"""``lookalike simulate-ab --freshness``: what the shoppers of one moving day see under each refresh policy.

The day after the newest published night moves (:func:`lookalike.sample.day.move_day`: listings arrive
and sell through it), then every hour of it runs as ``lookalike_intraday`` runs it (``run_hour`` and
``publish_hour``), so the lists each hour served are the pipeline's own. The sample's users then visit
through the day: a visit opens a few product pages among the listings on sale at that moment, the newest
most often (a listing's pull halves every ``HALF_LIFE_DAYS``, as new listings are boosted). Each page view
is shown the similar-items module its policy serves at that moment:

- ``nightly``: the night's lists all day;
- ``hourly``: the lists of the newest hour before the view.

On the same views, each policy reports the share of page views with no module (the listing is younger
than the refresh that serves it) and the share of module slots showing an item sold before the view.
"""
from __future__ import annotations

import bisect
import hashlib
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from lookalike.config import Config
from lookalike.errors import LookalikeError
from lookalike.experiments.simulate import MODULE_SLOTS, VISIT_PROBABILITY, source_users
from lookalike.storage import Warehouse

POLICIES = ("nightly", "hourly")
HALF_LIFE_DAYS = 2.0  # how fast a listing's pull on shoppers fades with its age
PAGES_PER_VISIT = 3.0  # mean product pages a visit opens


def freshness(cfg: Config, *, seed: int = 0, new: float = 0.02, sold: float = 0.02, progress=print) -> dict:
    """Move the day after the newest night, run its hours, and measure both policies on the same views."""
    from lookalike.intraday.stage import publish_hour, run_hour, served_night
    from lookalike.sample.day import move_day

    if not cfg.source.url.startswith("sqlite:///"):
        raise LookalikeError("simulate-ab --freshness moves the sample marketplace's day: the source must be the "
                             "sample's SQLite file (lookalike sample-data)")
    wh = Warehouse.of(cfg)
    night = served_night(wh)
    db = Path(cfg.source.url.removeprefix("sqlite:///"))
    moved = move_day(db, Path(cfg.source.images), night.ds, new=new, sold=sold, seed=seed)
    progress(f"simulate-ab --freshness: the day {night.ds}: {len(moved['listed'])} listings arrive, "
             f"{len(moved['sold'])} are sold; running its 24 hours")
    start = datetime.fromisoformat(night.cutoff)
    states = []  # (as_of, the lists served from then)
    lists = _night_lists(wh, night.ds)
    for hour in range(1, 25):
        as_of = (start + timedelta(hours=hour)).isoformat()
        run_hour(cfg, as_of)
        publish_hour(cfg, as_of)
        states.append((as_of, _overlaid(wh, night.ds, as_of, lists)))
    listed = {**_night_created(wh, night.ds), **moved["listed"]}
    result = measure(lists, states, listed, moved["sold"], source_users(cfg.source.url), day=night.ds, seed=seed)
    return {"day": night.ds, "listed": len(moved["listed"]), "sold": len(moved["sold"]), **result}


def _night_lists(wh: Warehouse, ds: str) -> dict[str, list[str]]:
    table = wh.read_partition("item_neighbors", ds, columns=["item_id", "rank", "neighbor_id"])
    table = table.filter(pc.less_equal(table.column("rank"), MODULE_SLOTS)).sort_by([("item_id", "ascending"),
                                                                                     ("rank", "ascending")])
    lists: dict[str, list[str]] = {}
    for item, neighbour in zip(table.column("item_id").to_pylist(), table.column("neighbor_id").to_pylist()):
        lists.setdefault(item, []).append(neighbour)
    return lists


def _overlaid(wh: Warehouse, ds: str, as_of: str, night: dict[str, list[str]]) -> dict[str, list[str]]:
    """The lists served from the hour ``as_of`` on: the night's, with every list the hours changed since."""
    import pyarrow.parquet as pq

    from lookalike.intraday.stage import TABLE, finished_hours

    hour = next(h for h in finished_hours(wh, ds) if h["as_of"] == as_of)
    rows = pq.read_table(Path(hour["folder"]) / TABLE, columns=["item_id", "rank", "neighbor_id"])
    rows = rows.filter(pc.less_equal(rows.column("rank"), MODULE_SLOTS)).sort_by([("item_id", "ascending"),
                                                                                  ("rank", "ascending")])
    changed: dict[str, list[str]] = {}
    for item, rank, neighbour in zip(*(rows.column(c).to_pylist() for c in ("item_id", "rank", "neighbor_id"))):
        changed.setdefault(item, [])
        if rank > 0:
            changed[item].append(neighbour)
    served = dict(night)
    for item, found in changed.items():
        if found:
            served[item] = found
        else:
            served.pop(item, None)
    return served


def _night_created(wh: Warehouse, ds: str) -> dict[str, str]:
    catalog = wh.read_partition("catalog", ds, columns=["item_id", "created_at"])
    return dict(zip(catalog.column("item_id").to_pylist(), catalog.column("created_at").to_pylist()))


def measure(night: dict[str, list[str]], states: list[tuple[str, dict]], listed: dict[str, str],
            sold: dict[str, str], users: list[str], *, day: str, seed: int = 0) -> dict:
    """Both policies on the same page views of ``day`` (``listed``: every item on sale at some moment of it,
    with when it was listed; ``sold``: when it was sold, for those sold that day)."""
    start = datetime.fromisoformat(f"{day}T00:00:00")
    items = sorted(listed)
    born = np.array([(datetime.fromisoformat(listed[i]) - start).total_seconds() for i in items])
    gone = np.array([(datetime.fromisoformat(sold[i]) - start).total_seconds() if i in sold else np.inf
                     for i in items])
    stamps = [(datetime.fromisoformat(a) - start).total_seconds() for a, _ in states]
    counts = {p: {"views": 0, "no_module": 0, "slots": 0, "sold_slots": 0} for p in POLICIES}
    for user in users:
        rng = np.random.default_rng(int(hashlib.sha256(f"{seed}:{day}:{user}".encode()).hexdigest()[:15], 16))
        if rng.random() >= VISIT_PROBABILITY:
            continue
        moment = float(rng.uniform(0, 86_400))
        for _ in range(1 + rng.poisson(PAGES_PER_VISIT - 1)):
            moment = min(moment + float(rng.uniform(20, 300)), 86_399.0)
            selling = (born <= moment) & (gone > moment)
            if not selling.any():
                continue
            pull = np.where(selling, np.exp2(-(moment - born) / (HALF_LIFE_DAYS * 86_400)), 0.0)
            page = items[int(rng.choice(len(items), p=pull / pull.sum()))]
            at = bisect.bisect_right(stamps, moment)
            for policy, served in (("nightly", night), ("hourly", states[at - 1][1] if at else night)):
                shown = served.get(page)
                tally = counts[policy]
                tally["views"] += 1
                if not shown:
                    tally["no_module"] += 1
                    continue
                tally["slots"] += len(shown)
                tally["sold_slots"] += sum(1 for item in shown if sold.get(item, "9999") < _clock(start, moment))
    return {policy: {**c, "no_module_share": round(c["no_module"] / max(c["views"], 1), 4),
                     "sold_slot_share": round(c["sold_slots"] / max(c["slots"], 1), 4)}
            for policy, c in counts.items()}


def _clock(start: datetime, seconds: float) -> str:
    return (start + timedelta(seconds=seconds)).isoformat(timespec="seconds")
