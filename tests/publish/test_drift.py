"""The gate against the previous published day: a broken model after a good one is refused."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lookalike.config import PublishConfig, load_config
from lookalike.embed.stage import run_embed
from lookalike.extract.stage import run_extract
from lookalike.neighbors.stage import run_neighbors
from lookalike.publish.drift import compare
from lookalike.publish.stage import DriftRefused, run_publish
from lookalike.query import run_query
from lookalike.storage import Warehouse
from lookalike.train.stage import run_train
from tests.conftest import DS, tiny_model, write_config

NEXT = "2026-11-22"
REPO = Path(__file__).resolve().parents[2]


def _profile(rows=1000, coverage=1.0, p10=0.7, p50=0.8, p90=0.9) -> dict:
    return {"rows": {"catalog": rows, "item_embeddings": rows, "item_neighbors": 10 * rows}, "coverage": coverage,
            "score_quantiles": {"0.1": p10, "0.5": p50, "0.9": p90}}


@pytest.mark.parametrize("today, lists, breach", [
    (_profile(rows=1400), None, "catalog rows 1000 → 1400 (+40.0%"),
    (_profile(rows=400), None, "item_neighbors rows 10000 → 4000"),
    (_profile(coverage=0.9), None, "coverage 100.0% → 90.0%"),
    (_profile(p10=0.9, p50=0.95, p90=0.99), None, "score quantiles"),
    (_profile(), {"mean": 0.05, "unchanged_items_compared": 300}, "kept 5.0% of their neighbours (300 compared"),
])
def test_each_bound_is_named_with_its_figures(today, lists, breach):
    bounds = PublishConfig(max_rows_change=0.3)
    assert compare(_profile(), None, lists, bounds) == []  # no previous day: nothing to compare
    assert compare(_profile(rows=1100), _profile(), {"mean": 0.9, "unchanged_items_compared": 300}, bounds) == []
    breaches = compare(today, _profile(), lists, bounds)
    assert breaches and any(breach in b for b in breaches), breaches


def _night(cfg, ds, model_uri):
    run_extract(cfg, ds)
    run_embed(cfg, ds, model_uri=model_uri)
    run_neighbors(cfg, ds)
    return run_publish(cfg, ds)


def test_a_random_weight_model_after_a_good_one_is_refused_and_the_good_day_stays_served(tmp_path, sample_dir):
    # The recipe of the model whose score quantiles the bounds were set against (whole photos, every token).
    config = write_config(tmp_path, sample_dir, train={"max_steps": 1000, "batch_size": 64, "warmup_steps": 10,
                                                       "crop_scale": 1.0, "patch_dropout": 0.0},
                          neighbors={"k": 10})
    cfg = load_config(config, environ={})
    wh = Warehouse.of(cfg)
    run_extract(cfg, DS)
    good = run_train(cfg, DS)["model_uri"]
    _night(cfg, DS, good)
    first = wh.run_record(DS)["drift"]
    assert first["previous_ds"] is None and first["decision"] == "published" and first["profile"]["coverage"] == 1.0

    broken = tiny_model(tmp_path / "random", seed=3, version="random-weights")
    with pytest.raises(DriftRefused) as refused:
        _night(cfg, NEXT, broken)
    message = str(refused.value)
    assert f"differs from the published {DS}" in message and "score quantiles" in message
    assert "publish.accept_drift" in message and "--accept-drift" in message
    assert wh.latest_ds("item_neighbors") == DS  # nothing of NEXT was published
    assert run_query(wh, "select distinct ds, model_version from item_neighbors")[1] == [
        (DS, wh.run_record(DS)["drift"]["profile"]["model_versions"][0])]

    # The same day with the good model passes the gate: the catalogue moved a little, the lists did not.
    run_embed(cfg, NEXT, model_uri=good)
    run_neighbors(cfg, NEXT)
    gate = run_publish(cfg, NEXT) and wh.run_record(NEXT)["drift"]
    assert gate["decision"] == "published" and gate["previous_ds"] == DS and gate["overlap"]["mean"] > 0.9

    # The operator's override publishes the broken day anyway, and the run record says so.
    run_embed(cfg, NEXT, model_uri=broken)
    run_neighbors(cfg, NEXT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    plain = subprocess.run([sys.executable, "-m", "lookalike.tools.cli", "publish", "--config", str(config), "--ds", NEXT],
                           capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert plain.returncode == 2 and "refused" in plain.stderr and "Traceback" not in plain.stderr, plain.stderr[-2000:]
    forced = subprocess.run([sys.executable, "-m", "lookalike.tools.cli", "publish", "--config", str(config), "--ds", NEXT,
                             "--accept-drift"], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert forced.returncode == 0, forced.stderr[-2000:]
    record = wh.run_record(NEXT)["drift"]
    assert record["accept_drift"] is True and record["breaches"]
    assert record["decision"] == "published beyond the bounds (publish.accept_drift)"
