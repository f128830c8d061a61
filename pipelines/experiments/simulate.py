"""``lookalike simulate-ab``: the sample marketplace's front end during an A/B test, to test one.

For ``days`` days from a published ds, the users of the sample visit the site. Each user's arm
comes from the published ``experiment_variants`` by the same hash the serving side applies
(:mod:`lookalike.assignment`); each product page the user opens shows the top
``MODULE_SLOTS`` neighbours that arm published in ``item_neighbors_variants``. The user clicks a
shown item with the sample generator's own probability (:func:`~lookalike.sample.marketplace.
click_probability`: mostly the hidden visual similarity of the two items, a little the user's
taste) and buys a clicked item as the generator does. Which pages a user opens, and when, does not
depend on the arm, so two arms that serve the same neighbours (an A/A test) differ by chance only.

The log (page views, module impressions and clicks, purchases, each with ``experiment`` and
``variant``) is written into the source's ``interactions``, replacing what an earlier simulation
of the same experiment wrote for those days; the columns are added when the table lacks them.
It plays the sample only: the hidden attributes that drive the clicks are the sample's
``hidden_attributes.json``, which a real marketplace does not have.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import sqlalchemy as sa

from lookalike.config import Config
from lookalike.errors import LookalikeError
from lookalike.assignment import Arm, Experiment
from lookalike.sample.marketplace import Taste, click_probability, purchase_after_click, visual_similarity
from lookalike.storage import Warehouse

log = logging.getLogger(__name__)

MODULE_SLOTS = 6  # neighbours the similar-items module shows on a product page
VISIT_PROBABILITY = 0.35  # a user visits on a given day
PAGE_POOL = 40  # items a visiting user is offered (by taste) to open
LOG_COLUMNS = ("user_id", "session_id", "event", "item_id", "source_item_id", "ts", "experiment", "variant")


@dataclass(frozen=True)
class Site:
    """What the front end needs: the arms, each arm's module (item → the items it shows), the
    pages users can open (items every arm has a module for) and the hidden attributes."""
    experiment: Experiment
    ds: str
    modules: dict[str, dict[str, list[str]]]
    pages: list[str]
    attrs: dict[str, dict]


def load_site(cfg: Config, name: str, ds: str | None = None, attributes: Path | None = None) -> Site:
    """The published arms and neighbours of experiment ``name`` on ``ds`` (the newest by default)."""
    wh = Warehouse.of(cfg)
    published = [d for d in wh.entries("experiment_variants")
                 if wh.read_partition("experiment_variants", d, filters=[("experiment", "=", name)]).num_rows]
    if not published:
        raise LookalikeError(f"experiment {name!r} has no published partition of experiment_variants: it runs "
                             "once a nightly run inside its start/end dates has published (lookalike run)")
    ds = ds or published[-1]
    if ds not in published:
        raise LookalikeError(f"experiment {name!r} was not published for ds={ds} (published: {', '.join(published)})")
    rows = wh.read_partition("experiment_variants", ds, filters=[("experiment", "=", name)]).to_pylist()
    rows.sort(key=lambda r: r["bucket_low"])
    arms = tuple(Arm(r["variant"], r["serve"], r["share"], r["bucket_low"], r["bucket_high"], r["is_control"])
                 for r in rows)
    experiment = Experiment(name, rows[0]["salt"], arms, rows[0]["start_ds"] or "", rows[0]["end_ds"] or "")
    table = wh.read_partition("item_neighbors_variants", ds, filters=[("experiment", "=", name)],
                              columns=["variant", "item_id", "rank", "neighbor_id"])
    table = table.filter(pc.less_equal(table.column("rank"), MODULE_SLOTS)).sort_by([("variant", "ascending"),
                                                                                     ("item_id", "ascending"),
                                                                                     ("rank", "ascending")])
    modules: dict[str, dict[str, list[str]]] = {arm.variant: {} for arm in arms}
    for variant, item, neighbour in zip(*(table.column(c).to_pylist() for c in ("variant", "item_id", "neighbor_id"))):
        modules[variant].setdefault(item, []).append(neighbour)
    pages = sorted(set.intersection(*(set(m) for m in modules.values())))
    if not pages:
        raise LookalikeError(f"experiment {name!r} on ds={ds}: no item has neighbours in every arm")
    return Site(experiment, ds, modules, pages, _attributes(cfg, attributes))


def with_modules(site: Site, modules: dict[str, dict[str, list[str]]]) -> Site:
    """``site`` showing ``modules`` (read elsewhere: an online store) on the pages every arm has one for."""
    pages = sorted(set.intersection(*(set(m) for m in modules.values())))
    if not pages:
        raise LookalikeError(f"experiment {site.experiment.name!r}: no item has a list in every arm")
    return Site(site.experiment, site.ds, modules, pages, site.attrs)


def _attributes(cfg: Config, path: Path | None) -> dict[str, dict]:
    if path is None:
        if not cfg.source.url.startswith("sqlite:///"):
            raise LookalikeError("simulate-ab plays the sample marketplace and needs its hidden_attributes.json; "
                                 "the source is not the sample's SQLite file, so pass --attributes PATH")
        path = Path(cfg.source.url.removeprefix("sqlite:///")).parent / "hidden_attributes.json"
    if not Path(path).is_file():
        raise LookalikeError(f"no hidden attributes at {path}: simulate-ab runs on the sample marketplace "
                             "(lookalike sample-data writes them beside marketplace.db)")
    return json.loads(Path(path).read_text())


def source_users(url: str) -> list[str]:
    """The users of the source's interaction log."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as con:
            return sorted(r[0] for r in con.execute(sa.text("select distinct user_id from interactions")))
    finally:
        engine.dispose()


def _seed(*parts) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:15], 16)


def simulate(site: Site, users: list[str], *, days: int, seed: int = 0, start: str | None = None) -> pd.DataFrame:
    """The log of ``days`` days from ``start`` (the site's ds), as the interactions' columns."""
    first = np.datetime64(date.fromisoformat(start or site.ds), "s")
    pages = np.array(site.pages, dtype=object)
    known = np.array([site.attrs.get(p) is not None for p in pages])
    pages = pages[known]
    rows: list[tuple] = []
    name = site.experiment.name
    for user in users:
        variant = site.experiment.variant_of(user)
        module = site.modules[variant]
        rng = np.random.default_rng(_seed(seed, name, user))
        taste = Taste.draw(rng)
        for day in range(days):
            if rng.random() >= VISIT_PROBABILITY:
                continue
            ts = day * 86_400 + float(rng.uniform(0, 80_000))  # seconds from the first day, formatted at the end
            session = f"{user}-{name}-{seed}-{day}"
            pool = pages[rng.integers(0, len(pages), size=PAGE_POOL)]
            weights = np.exp([taste(site.attrs[p]) for p in pool])
            for page in rng.choice(pool, size=1 + rng.poisson(1.0), p=weights / weights.sum()):
                ts += float(rng.uniform(20, 300))
                rows.append((user, session, "view", page, None, ts, name, variant))
                shown = module[page]
                draws = rng.random((len(shown), 3))  # click, buy, delay: the same draws in every arm
                for item, (u_click, u_buy, u_delay) in zip(shown, draws):
                    rows.append((user, session, "impression", item, page, ts, name, variant))
                for item, (u_click, u_buy, u_delay) in zip(shown, draws):
                    a = site.attrs.get(item)
                    if a is None or u_click >= click_probability(visual_similarity(site.attrs[page], a), taste(a)):
                        continue
                    click = ts + 2 + 58 * float(u_delay)
                    rows.append((user, session, "click", item, page, click, name, variant))
                    rows.append((user, session, "view", item, None, click + 1, name, variant))
                    if u_buy < purchase_after_click(taste(a)):
                        rows.append((user, session, "purchase", item, None, click + 90, name, variant))
    frame = pd.DataFrame(rows, columns=list(LOG_COLUMNS))
    seconds = frame["ts"].to_numpy(dtype=np.float64).astype(np.int64).astype("timedelta64[s]")
    frame["ts"] = np.datetime_as_string(first + seconds, unit="s")
    return frame


def write_log(url: str, frame: pd.DataFrame, experiment: str, start: str, days: int) -> int:
    """Replace ``experiment``'s events of [start, start + days) in the source's interactions by ``frame``."""
    end = (date.fromisoformat(start) + timedelta(days=days)).isoformat()
    engine = sa.create_engine(url)
    try:
        present = {c["name"] for c in sa.inspect(engine).get_columns("interactions")}
        with engine.begin() as con:
            for column in ("experiment", "variant"):
                if column not in present:
                    con.execute(sa.text(f"alter table interactions add column {column} text"))
            sqlite = engine.dialect.name == "sqlite"
            ts = (lambda v: v.replace("T", " ")) if not sqlite else (lambda v: v)
            con.execute(sa.text("delete from interactions where experiment = :e and ts >= :a and ts < :b"),
                        {"e": experiment, "a": ts(f"{start}T00:00:00"), "b": ts(f"{end}T00:00:00")})
            records = frame.assign(ts=frame["ts"].map(ts)).to_dict("records")
            insert = sa.text(f"insert into interactions ({', '.join(LOG_COLUMNS)}) values "
                             f"({', '.join(':' + c for c in LOG_COLUMNS)})")
            for i in range(0, len(records), 5000):
                con.execute(insert, records[i:i + 5000])
    finally:
        engine.dispose()
    return len(frame)
