"""Publishing: checks gate the commit; a refused or crashed publish leaves the last one readable."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lookalike import schemas
from lookalike.config import load_config
from lookalike.publish.checks import check_neighbors
from lookalike.publish.stage import NIGHTLY_TABLES as PUBLISHED_TABLES  # what run_publish commits
from lookalike.publish.stage import PublishCheckFailed, run_publish
from lookalike.query import run_query
from lookalike.storage import Warehouse, write_parquet
from tests.conftest import write_config

DS = "2026-11-21"
REPO = Path(__file__).resolve().parents[2]
K = 2


def _stage_run(wh: Warehouse, ds: str, *, score_shift: float = 0.0, self_neighbor: bool = False) -> None:
    """A small, valid work area for ``ds`` (4 on-sale items, k=2), made by hand."""
    ids = ["a", "b", "c", "d"]
    listing = {f.name: [None] * 4 for f in schemas.LISTING_FIELDS}
    listing.update(item_id=ids, title=["t1", "t2", "t3", "t4"], status=["on_sale"] * 4)
    items = pa.Table.from_pydict({**listing, "ds": [ds] * 4, "image": [b"x"] * 4, "image_width": [1] * 4,
                                  "image_height": [1] * 4, "image_sha256": ["h1", "h2", "h3", "h4"],
                                  "image_source": [None] * 4},
                                 schema=schemas.ITEMS)
    for name in ("listings_snapshot", "catalog"):
        write_parquet(items, wh.fresh_work(ds, name) / "part-0.parquet")
    for name in ("quarantine", "embed_quarantine"):
        write_parquet(pa.Table.from_pylist([], schema=schemas.QUARANTINE), wh.fresh_work(ds, name) / "part-0.parquet")
    vecs = np.eye(4, dtype=np.float32)
    write_parquet(pa.Table.from_pydict({"ds": [ds] * 4, "item_id": ids, "model_version": ["v"] * 4,
                                        "image_sha256": ["h1", "h2", "h3", "h4"], "embedding": vecs.tolist(),
                                        "text_sha256": [None] * 4},
                                       schema=schemas.ITEM_EMBEDDINGS), wh.fresh_work(ds, "item_embeddings") / "p.parquet")
    nbrs = {"a": ["b", "c"], "b": ["a", "c"], "c": ["d", "a"], "d": ["c", "a"]}
    if self_neighbor:
        nbrs["a"] = ["a", "b"]
    rows = [{"ds": ds, "item_id": i, "rank": r + 1, "neighbor_id": n, "score": 0.5 - 0.1 * r + score_shift,
             "model_version": "v"} for i in ids for r, n in enumerate(nbrs[i])]
    write_parquet(pa.Table.from_pylist(rows, schema=schemas.ITEM_NEIGHBORS),
                  wh.fresh_work(ds, "item_neighbors") / "part-0.parquet")
    metric = {"ds": ds, "system": "siglip", "model_version": "v", "metric": "ndcg", "k": 5, "value": 0.5,
              "ci_low": 0.4, "ci_high": 0.6, "n": 10}
    write_parquet(pa.Table.from_pylist([metric], schema=schemas.EVAL_METRICS),
                  wh.fresh_work(ds, "eval_metrics") / "part-0.parquet")


@pytest.fixture
def setup(tmp_path, sample_dir):
    cfg = load_config(write_config(tmp_path, sample_dir, neighbors={"k": K}), environ={})
    return cfg, Warehouse.of(cfg)


def _scores(wh):
    return run_query(wh, "select score from item_neighbors where item_id = 'a' and rank = 1")[1]


def test_publish_then_a_failing_check_publishes_nothing(setup):
    cfg, wh = setup
    _stage_run(wh, DS)
    run_publish(cfg, DS)
    assert run_query(wh, "select count(*) from item_neighbors")[1] == [(4 * K,)]
    _stage_run(wh, DS, score_shift=0.1, self_neighbor=True)
    with pytest.raises(PublishCheckFailed, match="list themselves as a neighbour"):
        run_publish(cfg, DS)
    assert _scores(wh) == [(pytest.approx(0.5),)]  # the previous partition, intact


def _publish_process(config, *, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    if fault:
        env["LOOKALIKE_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "lookalike.tools.cli", "publish", "--config", str(config), "--ds", DS],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def _published_bytes(wh: Warehouse) -> dict[str, str]:
    """SHA-256 of the manifest and of every file it references: what readers can see."""
    import hashlib

    found = {"_manifest.json": hashlib.sha256(wh.objects.get_text("_manifest.json").encode()).hexdigest()}
    for table in PUBLISHED_TABLES:
        for path in wh.partition_files(table):
            with wh.fs.open_input_stream(path) as fh:
                found[path] = hashlib.sha256(fh.read()).hexdigest()
    return found


def _all_keys(wh: Warehouse) -> list[str]:
    if wh.location.startswith("s3://"):
        pages = wh.objects.client.get_paginator("list_objects_v2").paginate(  # moto's state is shared: our prefix
            Bucket=wh.objects.bucket, Prefix=wh.objects.prefix + "/")
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))
    root = Path(wh.location)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "_work" not in p.parts)


# Every crash point of a publish: after the first table's files, with every file written, with the
# new manifest written but not yet switched in (local: the temporary file before its rename; S3:
# before the conditional PUT), and after the switch but before the run record and the clean-up.
PUBLISH_POINTS = ["publish.between_tables", "publish.before_commit", "publish.during_switch", "publish.after_switch"]


@pytest.mark.parametrize("store", ["local", "s3"])
@pytest.mark.parametrize("point", PUBLISH_POINTS)
def test_a_publish_killed_at_any_point_keeps_what_was_published_and_a_rerun_converges(
        point, store, request, tmp_path, sample_dir):
    extra = {}
    if store == "s3":
        request.getfixturevalue("s3")
        extra = {"warehouse": "s3://models/warehouse", "work_dir": str(tmp_path / "work")}
    config = write_config(tmp_path, sample_dir, neighbors={"k": K}, **extra)
    wh = Warehouse.of(load_config(config, environ={}))
    _stage_run(wh, DS)
    assert _publish_process(config).returncode == 0
    before, published = wh.entries("item_neighbors")[DS]["run_id"], _published_bytes(wh)
    _stage_run(wh, DS, score_shift=0.2)

    killed = _publish_process(config, fault=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    if point == "publish.after_switch":  # the commit point was passed: the new run is what readers see
        assert wh.entries("item_neighbors")[DS]["run_id"] != before
        assert _scores(wh) == [(pytest.approx(0.7),)]
    else:  # the previous partitions, byte for byte, and queryable
        assert _published_bytes(wh) == published
        assert _scores(wh) == [(pytest.approx(0.5),)]

    rerun = _publish_process(config)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert _scores(wh) == [(pytest.approx(0.7),)]
    assert run_query(wh, "select count(*) from item_neighbors_all")[1] == [(4 * K,)]  # published once
    run_id = wh.entries("item_neighbors")[DS]["run_id"]
    record = wh.run_record(DS)
    assert record["run_id"] == run_id
    # what ran: the package, the checkout's commit, the config's hash (never the config's secrets)
    assert record["code"]["package"] == "0.1.0" and len(record["code"]["commit"].removesuffix("-dirty")) == 40
    assert len(record["config_sha256"]) == 64
    # No orphans: every object is the manifest, its lock, the run record or a file of the live run.
    live = {f"{t}/{wh.entries(t)[DS]['path']}/{name}" for t in PUBLISHED_TABLES for name in wh.entries(t)[DS]["files"]}
    prefix = "warehouse/" if store == "s3" else ""
    keys = {k.removeprefix(prefix) for k in _all_keys(wh)}
    assert keys - live <= {"_manifest.json", "_manifest.lock", f"_runs/{DS}.json"}, sorted(keys - live)


def test_neighbor_checks_catch_each_breach():
    def table(rows):
        return pa.Table.from_pylist([{"ds": DS, "item_id": i, "rank": r, "neighbor_id": n, "score": s,
                                      "model_version": "v"} for i, r, n, s in rows], schema=schemas.ITEM_NEIGHBORS)

    ok = [("a", 1, "b", 0.9), ("a", 2, "c", 0.8), ("b", 1, "a", 0.9), ("b", 2, "c", 0.1)]
    active, embedded = pa.table({"item_id": ["a", "b", "c"]}), pa.table({"item_id": ["a", "b"]})
    assert check_neighbors(table(ok), k=2, active=active, embedded=embedded) == []
    cases = {
        "not descending": [("a", 1, "b", 0.1), ("a", 2, "c", 0.8)] + ok[2:],
        "not on sale": ok[:3] + [("b", 2, "z", 0.1)],
        "outside [-1, 1]": ok[:3] + [("b", 2, "c", 1.5)],
        "exactly k=2": ok[:3],
        "themselves": [("a", 1, "a", 0.9), ("a", 2, "c", 0.8)] + ok[2:],
        "ranks 1..2": ok[:3] + [("b", 3, "c", 0.1)],
        "no embedding": ok + [("c", 1, "a", 0.9), ("c", 2, "b", 0.8)],
    }
    for expected, rows in cases.items():
        failures = check_neighbors(table(rows), k=2, active=active, embedded=embedded)
        assert any(expected in f for f in failures), (expected, failures)


def test_a_day_without_an_evaluation_publishes_and_its_tables_and_report_still_read(setup, tmp_path):
    import shutil

    from lookalike.publish.report import build_report

    cfg, wh = setup
    _stage_run(wh, DS)
    shutil.rmtree(wh.work(DS, "eval_metrics"))  # lookalike_finetune did not run for this ds
    result = run_publish(cfg, DS)
    assert "eval_metrics" not in result["rows"] and wh.entries("eval_metrics") == {}
    # a never-published table reads as empty, with its columns: analysts' queries still bind
    assert run_query(wh, "select metric, k, value from eval_metrics")[1] == []
    page = build_report(cfg, DS, tmp_path / "report.html").read_text()
    assert "No offline evaluation for this ds." in page


def test_a_day_with_only_the_user_models_metrics_still_summarises(setup):
    from lookalike.tools.summary import run_summary

    cfg, wh = setup
    _stage_run(wh, DS)
    metric = {"ds": DS, "system": "userrec_pixrec", "model_version": "u1", "metric": "recall", "k": 10,
              "value": 0.2, "ci_low": 0.1, "ci_high": 0.3, "n": 10}
    write_parquet(pa.Table.from_pylist([metric], schema=schemas.EVAL_METRICS),
                  wh.fresh_work(DS, "eval_metrics") / "part-0.parquet")
    run_publish(cfg, DS)
    summary = run_summary(cfg, DS)
    assert "Offline evaluation" not in summary and "Publish gate: first published day" in summary
