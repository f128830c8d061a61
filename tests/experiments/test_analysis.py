"""The A/B analysis on logs made by hand: the delta method against a user-level bootstrap, the
conversion window, the sample-ratio check and the power warning."""
import math

import numpy as np
import pandas as pd

from lookalike.config import AbConfig
from lookalike.experiments.analysis import analyse, format_table, lift, ratio
from lookalike.assignment import Arm, Experiment

EXP = Experiment("look", "look", (Arm("a", "production", 0.5, 0, 5000, True),
                                  Arm("b", "candidate", 0.5, 5000, 10000, False)), "", "")


def _log(users: dict[str, int], ctr: dict[str, float], seed: int = 0, impressions: int = 20) -> pd.DataFrame:
    """Each user of each arm sees ``impressions`` module items on one page and clicks each with the
    arm's CTR times a user-level factor (users differ, as they do); a click is bought 90 s later
    with probability 0.2."""
    rng = np.random.default_rng(seed)
    rows = []
    for variant, n in users.items():
        for u in range(n):
            user = f"{variant}{u}"
            taste = rng.gamma(2.0, 0.5)
            for j in range(impressions):
                item, ts = f"i{j}", pd.Timestamp("2026-12-01") + pd.Timedelta(minutes=u % 1000)
                rows.append((user, "impression", item, "src", ts, variant))
                if rng.random() < min(1.0, ctr[variant] * taste):
                    rows.append((user, "click", item, "src", ts + pd.Timedelta(seconds=5), variant))
                    if rng.random() < 0.2:
                        rows.append((user, "purchase", item, None, ts + pd.Timedelta(seconds=95), variant))
    frame = pd.DataFrame(rows, columns=["user_id", "event", "item_id", "source_item_id", "ts", "variant"])
    frame["ts"] = frame["ts"].dt.strftime("%Y-%m-%dT%H:%M:%S")
    return frame.assign(experiment="look", session_id=None)


def _rows(frame, **kw):
    return {(r["variant"], r["metric"]): r
            for r in analyse(frame, EXP, ds="2026-12-02", prices={"i1": 100.0}, ab=AbConfig(**kw))}


def test_the_delta_method_interval_matches_a_user_level_bootstrap():
    rng = np.random.default_rng(1)
    impressions = {v: rng.integers(1, 60, 800).astype(float) for v in "ab"}
    clicks = {v: rng.binomial(impressions[v].astype(int), np.clip(rng.gamma(2, 0.04 if v == "a" else 0.05, 800), 0, 1))
              .astype(float) for v in "ab"}
    est = lift(ratio(clicks["b"], impressions["b"]), ratio(clicks["a"], impressions["a"]))
    boot = []
    for _ in range(2000):
        i, j = rng.integers(0, 800, 800), rng.integers(0, 800, 800)
        boot.append(math.log((clicks["b"][i].sum() / impressions["b"][i].sum())
                             / (clicks["a"][j].sum() / impressions["a"][j].sum())))
    assert abs(est["se_log"] / np.std(boot) - 1) < 0.1  # the same width, to 10%
    low, high = np.quantile(boot, [0.025, 0.975])
    assert abs(math.log1p(est["lift_low"]) - low) < 0.02 and abs(math.log1p(est["lift_high"]) - high) < 0.02


def test_a_real_lift_is_found_and_reported_per_metric():
    rows = _rows(_log({"a": 600, "b": 600}, {"a": 0.05, "b": 0.08}))
    ctr = rows[("b", "ctr")]
    assert ctr["lift_low"] > 0.2 and ctr["lift_low"] < ctr["lift"] < ctr["lift_high"]  # truly +60%
    assert rows[("a", "ctr")]["lift"] is None and rows[("a", "ctr")]["is_control"]
    assert rows[("b", "ctr")]["users"] == 600 and rows[("b", "ctr")]["impressions"] == 600 * 20
    assert 0.15 < rows[("b", "conversion")]["value"] < 0.25  # 20% of clicks bought inside the window
    assert rows[("b", "ctr")]["warning"] is None and rows[("b", "ctr")]["srm_p_value"] > 0.001
    assert "revenue_per_user" in {m for _, m in rows}
    table = format_table(list(rows.values()))
    assert "a (control)" in table and "95% interval" in table


def test_a_purchase_outside_the_window_does_not_convert():
    frame = _log({"a": 200, "b": 200}, {"a": 0.1, "b": 0.1})
    assert _rows(frame, conversion_window_hours=0.01)[("a", "conversion")]["value"] == 0.0  # 36 s: bought after 90 s
    assert _rows(frame, conversion_window_hours=1.0)[("a", "conversion")]["value"] > 0.1


def test_a_broken_split_is_flagged():
    rows = _rows(_log({"a": 700, "b": 300}, {"a": 0.05, "b": 0.05}))
    ctr = rows[("b", "ctr")]
    assert ctr["srm_p_value"] < 1e-6 and "sample ratio mismatch" in ctr["warning"]
    assert "do not read the lifts" in format_table(list(rows.values()))


def test_a_small_test_of_a_small_effect_warns_it_is_underpowered():
    ctr = _rows(_log({"a": 60, "b": 60}, {"a": 0.05, "b": 0.052}, seed=3))[("b", "ctr")]
    assert ctr["power"] < 0.8 and "underpowered" in ctr["warning"] and "users per arm would give 80%" in ctr["warning"]
    assert ctr["lift_low"] < 0 < ctr["lift_high"]


def test_users_seen_in_two_arms_are_left_out_and_counted():
    frame = _log({"a": 300, "b": 300}, {"a": 0.05, "b": 0.05})
    frame.loc[(frame["user_id"] == "a0") & (frame.index % 2 == 0), "variant"] = "b"
    ctr = _rows(frame)[("b", "ctr")]
    assert "1 users logged in more than one arm" in ctr["warning"] and ctr["users"] == 300


def test_one_purchase_after_two_clicks_converts_both_and_is_revenue_once():
    rows = []
    for variant, user in (("a", "ua"), ("a", "ua2"), ("b", "ub"), ("b", "ub2")):
        rows += [(user, "impression", "i1", "s1", "2026-12-01T10:00:00", variant),
                 (user, "impression", "i1", "s2", "2026-12-01T10:05:00", variant),
                 (user, "click", "i1", "s1", "2026-12-01T10:00:05", variant),
                 (user, "click", "i1", "s2", "2026-12-01T10:05:05", variant),
                 (user, "purchase", "i1", None, "2026-12-01T10:06:00", variant)]
    frame = pd.DataFrame(rows, columns=["user_id", "event", "item_id", "source_item_id", "ts", "variant"])
    got = _rows(frame.assign(experiment="look", session_id=None))
    assert got[("a", "conversion")]["value"] == 1.0  # both clicks were followed by the purchase
    assert got[("a", "revenue_per_user")]["value"] == 100.0  # i1 costs 100, bought once by each user
