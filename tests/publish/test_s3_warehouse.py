"""A warehouse on S3 (moto's real server on loopback): the stages publish there and the CLI queries it."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import boto3

from lookalike.config import load_config
from lookalike.embed.stage import run_embed
from lookalike.evaluate.stage import run_evaluate
from lookalike.extract.stage import run_extract
from lookalike.neighbors.stage import run_neighbors
from lookalike.publish.stage import NIGHTLY_TABLES as PUBLISHED_TABLES  # what run_publish commits
from lookalike.publish.stage import run_publish
from lookalike.publish.report import build_report
from lookalike.train.stage import run_train
from lookalike.storage import Warehouse
from tests.conftest import DS, write_config

REPO = Path(__file__).resolve().parents[2]
K = 5


def _cli(*args):
    env = {k: v for k, v in os.environ.items() if k != "LOOKALIKE_CACHE_DIR"}  # the AWS_* settings of the fixture
    proc = subprocess.run([sys.executable, "-m", "lookalike.tools.cli", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_a_full_neighbours_publish_on_s3_then_lookalike_query_over_it(s3, tmp_path, sample_dir):
    boto3.client("s3").create_bucket(Bucket="lake")
    config = write_config(tmp_path, sample_dir, warehouse="s3://lake/warehouse", work_dir=str(tmp_path / "work"),
                          neighbors={"k": K})
    cfg = load_config(config, environ={})
    run_extract(cfg, DS)
    model = run_train(cfg, DS)["model_uri"]  # tiny, 40 steps: a registered candidate
    run_evaluate(cfg, DS, model)
    run_embed(cfg, DS, model_uri=model)
    run_neighbors(cfg, DS)
    first = run_publish(cfg, DS)
    assert first["warehouse"] == "s3://lake/warehouse"
    assert not (tmp_path / "warehouse").exists()  # nothing published on local disk

    wh = Warehouse.of(cfg)
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="lake")["Contents"]]
    assert "warehouse/_manifest.json" in keys and f"warehouse/_runs/{DS}.json" in keys
    assert all(DS in wh.entries(t) for t in PUBLISHED_TABLES)

    out = json.loads(_cli("query", "--config", str(config), "--format", "json",
                          "select count(*) as rows, count(distinct item_id) as items, min(rank) as lo, "
                          "max(rank) as hi from item_neighbors"))[0]
    embedded = json.loads(_cli("query", "--config", str(config), "--format", "json",
                               "select count(*) as n from item_embeddings"))[0]["n"]
    assert out["items"] > 100 and out["rows"] == K * out["items"] and (out["lo"], out["hi"]) == (1, K)
    assert out["items"] <= embedded

    # a rerun replaces the partition on S3 (the next night's embed reuses the published vectors from there)
    assert run_embed(cfg, DS, model_uri=model)["reused"] == embedded
    run_neighbors(cfg, DS)
    second = run_publish(cfg, DS)
    assert second["run_id"] != first["run_id"]
    for table in PUBLISHED_TABLES:
        assert wh.objects.children(f"{table}/ds={DS}") == [f"run={second['run_id']}"], table
    again = json.loads(_cli("query", "--config", str(config), "--format", "json",
                            "select count(*) as rows from item_neighbors_all"))[0]
    assert again["rows"] == out["rows"]

    # the report of a published ds whose work area is gone takes its thumbnails from the image store
    shutil.rmtree(wh.work(DS, "catalog"))
    page = build_report(cfg, DS, tmp_path / "report.html").read_text()
    assert "the source image store" in page
    assert page.count("data:image/jpeg;base64,") >= 12 * 4
