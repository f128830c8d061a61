"""Reading an A/B test from the logged interactions: per arm, users, module impressions, CTR,
conversion and revenue per user, each arm's lift against control with a 95% interval, a
sample-ratio-mismatch check and a power warning.

The unit is the user: users are what the hash assigns, and one user's impressions are not
independent (a user who likes the module clicks it all week). Each metric is a ratio of per-user
sums, R = Σx / Σy (CTR: clicks over impressions; conversion: converted module clicks over module
clicks; revenue per user: revenue over users, y = 1). Its variance is the delta method's, over
users (Deng, Knoblich & Lu, "Applying the Delta Method in Metric Analytics", KDD 2018):

    Var(R) ≈ (s_xx − 2 R s_xy + R² s_yy) / (n ȳ²)

and the relative lift R_t / R_c − 1 gets its interval on the log scale,
exp(log(R_t / R_c) ± 1.96 √(Var(R_t)/R_t² + Var(R_c)/R_c²)) − 1, so it never goes below −100%.
The delta method rather than a user-level bootstrap: it is exact enough at the hundreds of users
an arm has, costs one pass instead of a thousand resamples (the A/A calibration runs it fifty
times), and ``tests/experiments`` checks it against a user-level bootstrap.

A module click converts when the same user buys the clicked item within
``ab.conversion_window_hours`` after it. Revenue is the price of converted items, where the
catalogue has prices. The sample-ratio check is a χ² test of the users per arm against the
configured shares; a p-value below ``ab.srm_alpha`` says the split is broken and the lifts are
not to be trusted. The power is that of a two-sided 5% test to detect the lift as observed; below
``ab.min_power`` the row (of any metric) warns, with the users per arm that would reach it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from lookalike.config import AbConfig
from lookalike.assignment import Experiment

Z = 1.959963984540054  # two-sided 95%
METRICS = ("ctr", "conversion", "revenue_per_user")
LABELS = {"ctr": "CTR", "conversion": "conversion", "revenue_per_user": "revenue per user"}


@dataclass(frozen=True)
class Ratio:
    value: float
    variance: float  # of the value (delta method)
    n: int


def ratio(x: np.ndarray, y: np.ndarray) -> Ratio:
    """Σx / Σy over users, with its delta-method variance."""
    n = len(x)
    if n < 2 or y.sum() == 0:
        return Ratio(float("nan"), float("nan"), n)
    mx, my = x.mean(), y.mean()
    r = mx / my
    cov = np.cov(np.vstack([x, y]), ddof=1)
    variance = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (n * my * my)
    return Ratio(float(r), float(max(variance, 0.0)), n)


def lift(treatment: Ratio, control: Ratio) -> dict:
    """Relative lift with its 95% interval, p-value and the power to detect it as observed."""
    if not (treatment.value > 0 and control.value > 0):
        return {"lift": None, "lift_low": None, "lift_high": None, "p_value": None, "power": None, "se_log": None}
    d = math.log(treatment.value / control.value)
    se = math.sqrt(treatment.variance / treatment.value ** 2 + control.variance / control.value ** 2)
    if se == 0:
        return {"lift": math.expm1(d), "lift_low": math.expm1(d), "lift_high": math.expm1(d), "p_value": 0.0 if d else 1.0,
                "power": 1.0, "se_log": 0.0}
    z = abs(d) / se
    return {"lift": math.expm1(d), "lift_low": math.expm1(d - Z * se), "lift_high": math.expm1(d + Z * se),
            "p_value": float(2 * stats.norm.sf(z)), "power": float(stats.norm.cdf(z - Z) + stats.norm.cdf(-z - Z)),
            "se_log": se}


def per_user(events: pd.DataFrame, prices: dict[str, float], window_hours: float) -> pd.DataFrame:
    """One row per user with a module impression: variant, impressions, clicks, conversions, revenue."""
    module = events[events["source_item_id"].notna()]
    impressions = module[module["event"] == "impression"]
    clicks = module[module["event"] == "click"][["user_id", "item_id", "ts"]].reset_index(drop=True)
    clicks["click"] = np.arange(len(clicks))
    buys = events[events["event"] == "purchase"][["user_id", "item_id", "ts"]]
    joined = clicks.merge(buys, on=["user_id", "item_id"], suffixes=("", "_buy"))
    delay = pd.to_datetime(joined["ts_buy"]) - pd.to_datetime(joined["ts"])
    converted = joined[(delay > pd.Timedelta(0)) & (delay <= pd.Timedelta(hours=window_hours))]
    converted = converted.drop_duplicates("click")  # a click converts once
    bought = converted.drop_duplicates(["user_id", "item_id", "ts_buy"])  # a purchase is revenue once
    bought = bought.assign(revenue=bought["item_id"].map(prices).fillna(0.0))
    users = impressions.groupby("user_id").agg(variant=("variant", "first"), variants=("variant", "nunique"),
                                               impressions=("event", "size"))
    users["clicks"] = clicks.groupby("user_id").size().reindex(users.index, fill_value=0)
    users["conversions"] = converted.groupby("user_id").size().reindex(users.index, fill_value=0)
    users["revenue"] = bought.groupby("user_id")["revenue"].sum().reindex(users.index, fill_value=0.0)
    return users


def price_map(tables) -> dict[str, float]:
    """item_id → price over Arrow tables with those columns (the later table wins), prices known only."""
    prices: dict[str, float] = {}
    for table in tables:
        prices.update((item, price) for item, price in zip(table.column("item_id").to_pylist(),
                                                           table.column("price").to_pylist()) if price is not None)
    return prices


def analyse(events: pd.DataFrame, experiment: Experiment, *, ds: str, prices: dict[str, float], ab: AbConfig,
            before: str | None = None) -> list[dict]:
    """The ``ab_results`` rows of ``experiment`` from ``events`` (the interactions log, with its
    ``experiment`` and ``variant`` columns), read as ``ab`` (``ab.*`` of the config) says, only
    those with ts < ``before`` when given. Empty when the log has no module impression of the
    experiment."""
    window_hours, srm_alpha, min_power = ab.conversion_window_hours, ab.srm_alpha, ab.min_power
    ev = events[events["experiment"] == experiment.name]
    if before:
        ev = ev[ev["ts"] < before]
    users = per_user(ev, prices, window_hours)
    if users.empty:
        return []
    first_day, last_day = str(ev["ts"].min())[:10], str(ev["ts"].max())[:10]
    crossed = int((users["variants"] > 1).sum())
    users = users[users["variants"] == 1]
    known = users[users["variant"].isin([arm.variant for arm in experiment.arms])]
    strays = len(users) - len(known)
    shares = experiment.shares()
    observed = np.array([int((known["variant"] == arm.variant).sum()) for arm in experiment.arms])
    srm_p = float(stats.chisquare(observed, observed.sum() * np.array([shares[a.variant] for a in experiment.arms])).pvalue) \
        if observed.sum() else None
    base = []
    if srm_p is not None and srm_p < srm_alpha:
        base.append(f"sample ratio mismatch: users per arm {dict(zip(shares, observed.tolist()))} against shares "
                    f"{shares} (χ² p={srm_p:.2g}): the split is broken, do not read the lifts")
    if crossed or strays:
        base.append(f"{crossed} users logged in more than one arm and {strays} in an unknown one were left out")
    has_prices = bool(prices)
    by_arm = {arm.variant: known[known["variant"] == arm.variant] for arm in experiment.arms}

    def ratios(frame: pd.DataFrame) -> dict[str, Ratio]:
        ones = np.ones(len(frame))
        return {"ctr": ratio(frame["clicks"].to_numpy(float), frame["impressions"].to_numpy(float)),
                "conversion": ratio(frame["conversions"].to_numpy(float), frame["clicks"].to_numpy(float)),
                "revenue_per_user": ratio(frame["revenue"].to_numpy(float), ones)}

    measured = {variant: ratios(frame) for variant, frame in by_arm.items()}
    control = experiment.control.variant
    rows = []
    for arm in experiment.arms:
        frame = by_arm[arm.variant]
        for metric in METRICS:
            if metric == "revenue_per_user" and not has_prices:
                continue
            value = measured[arm.variant][metric]
            against = {} if arm.is_control else lift(value, measured[control][metric])
            warnings = list(base)
            if not arm.is_control and against.get("power") is not None and against["power"] < min_power:
                warnings.append(_underpowered(against, metric, len(frame), min_power))
            rows.append({"ds": ds, "experiment": experiment.name, "variant": arm.variant, "is_control": arm.is_control,
                         "metric": metric, "users": len(frame), "impressions": int(frame["impressions"].sum()),
                         "value": None if math.isnan(value.value) else value.value,
                         **{key: against.get(key) for key in ("lift", "lift_low", "lift_high", "p_value", "power")},
                         "srm_p_value": srm_p, "first_day": first_day, "last_day": last_day,
                         "warning": "; ".join(warnings) or None})
    return rows


def _underpowered(against: dict, metric: str, users: int, min_power: float) -> str:
    d, se = math.log1p(against["lift"]), against["se_log"]
    text = (f"underpowered: power {against['power']:.2f} to detect the observed {LABELS[metric]} lift of "
            f"{against['lift']:+.1%}")
    if abs(d) > 1e-12:
        needed = users * ((Z + stats.norm.ppf(min_power)) * se / abs(d)) ** 2
        text += f" (about {math.ceil(needed):,} users per arm would give {min_power:.0%})"
    return text


def format_table(rows: list[dict]) -> str:
    """The rows as a fixed-width table, one line per variant and metric, warnings below."""
    header = ("variant", "metric", "users", "impressions", "value", "lift", "95% interval", "p", "power")
    lines = []
    for r in rows:
        interval = "" if r["lift"] is None else f"[{r['lift_low']:+.1%}, {r['lift_high']:+.1%}]"
        value = "" if r["value"] is None else (f"{r['value']:.2f}" if r["metric"] == "revenue_per_user"
                                               else f"{r['value']:.4f}")
        lines.append((r["variant"] + (" (control)" if r["is_control"] else ""), r["metric"], f"{r['users']:,}",
                      f"{r['impressions']:,}", value, "" if r["lift"] is None else f"{r['lift']:+.1%}", interval,
                      "" if r["p_value"] is None else f"{r['p_value']:.3g}",
                      "" if r["power"] is None else f"{r['power']:.2f}"))
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines)]
    out = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in (header, *lines)]
    out.insert(1, "  ".join("-" * w for w in widths))
    warnings = sorted({w for r in rows if r["warning"] for w in r["warning"].split("; ")})
    return "\n".join(out + [f"warning: {w}" for w in warnings])
