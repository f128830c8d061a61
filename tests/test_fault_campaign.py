"""The fault campaign inside the stages: train mid-checkpoint, embed mid-Spark job, neighbours
mid-stream, and the user-recommendation publish. Each job is SIGKILLed at its crash point
(``LOOKALIKE_FAULT``); then nothing published changed, no process of the job is left, and a rerun
converges to what an uninterrupted run wrote. (Extract and the nightly publish: tests/extract/,
tests/publish/test_stage.py; the neighbours' update of the kept lists: tests/neighbors/test_night.py;
the online hand-off: tests/online/test_faults.py.)"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from lookalike import registry, schemas
from lookalike.config import load_config
from lookalike.embed.stage import run_embed
from lookalike.extract.stage import run_extract
from lookalike.neighbors.stage import run_neighbors
from lookalike.query import run_query
from lookalike.storage import ModelStore, Warehouse, write_parquet
from lookalike.train.stage import run_train
from tests.conftest import DS, write_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def night(tmp_path_factory, sample_dir):
    """One uninterrupted night's work area (extract, train with checkpoints, embed, neighbours): the reference."""
    root = tmp_path_factory.mktemp("campaign")
    config = write_config(root, sample_dir, train={"max_steps": 30, "batch_size": 32, "warmup_steps": 5,
                                                   "checkpoint_every": 10},
                          neighbors={"k": 5, "block_size": 64})
    cfg = load_config(config, environ={})
    run_extract(cfg, DS)
    trained = run_train(cfg, DS)
    registry.promote(ModelStore.at(cfg.models), trained["model_version"], reason="the campaign serves it")
    run_embed(cfg, DS)
    run_neighbors(cfg, DS)
    return config, cfg, Warehouse.of(cfg), Path(trained["model_uri"])


def _job(config, *args, fault=None, env=None) -> subprocess.CompletedProcess:
    """A ``lookalike`` job in its own process group; after it ends, no process of that group may remain."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    environ.update(env or {})
    if fault:
        environ["LOOKALIKE_FAULT"] = fault
    proc = subprocess.Popen([sys.executable, "-m", "lookalike.tools.cli", *args, "--config", str(config), "--ds", DS],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ, cwd=REPO,
                            start_new_session=True)
    out, err = proc.communicate(timeout=600)
    deadline = time.monotonic() + 30
    while True:  # the group is gone when its last process (a JVM, a loader worker) has exited
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"processes of `lookalike {args[0]}` outlived it (fault {fault})")
        time.sleep(0.2)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _weights(folder: Path) -> dict:
    return load_file(folder / "model.safetensors")


def _trained(models: Path) -> dict:
    return _weights(next(p.parent for p in models.rglob("model.safetensors")))


def test_training_killed_mid_checkpoint_resumes_to_the_uninterrupted_model(night, tmp_path):
    config = night[0]
    # The uninterrupted run in a process of its own too: the same threads, the same float sums.
    assert _job(config, "train", env={"LOOKALIKE_MODELS": str(tmp_path / "reference")}).returncode == 0
    env = {"LOOKALIKE_MODELS": str(tmp_path / "models")}
    killed = _job(config, "train", fault="train.mid_checkpoint@2", env=env)  # step 20's save, before its rename
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    saved = [p.name for p in (tmp_path / "models").rglob("*step-*")]
    assert "step-0000010.pt" in saved  # the half-saved checkpoint of step 20 is hidden, beside it
    assert [n for n in saved if n.startswith(".step-0000020.pt.") and n.endswith(".tmp")]

    rerun = _job(config, "train", env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resum" in (rerun.stdout + rerun.stderr).lower()  # from step 10, not from scratch
    assert not [p for p in (tmp_path / "models").rglob("*.tmp")]
    ours, theirs = _trained(tmp_path / "models"), _trained(tmp_path / "reference")
    assert ours.keys() == theirs.keys()
    assert all(torch.allclose(ours[name], theirs[name], atol=1e-5) for name in ours)


def _table(path: Path, sort: list[str]) -> pa.Table:
    return pq.read_table(path, partitioning=None).sort_by([(c, "ascending") for c in sort])


def test_embedding_killed_mid_spark_job_leaves_no_process_and_a_rerun_converges(night):
    config, cfg, wh, model = night
    reference = _table(wh.work(DS, "item_embeddings"), ["item_id"])
    env = {"LOOKALIKE_EMBED__LOCAL_MAX_ROWS": "0"}  # on Spark
    killed = _job(config, "embed", fault="embed.mid_spark", env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]  # the driver; its JVM followed it (_job)
    rerun = _job(config, "embed", env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    again = _table(wh.work(DS, "item_embeddings"), ["item_id"])
    assert again.column("item_id").to_pylist() == reference.column("item_id").to_pylist()
    assert np.allclose(np.array(again.column("embedding").to_pylist()),
                       np.array(reference.column("embedding").to_pylist()), atol=1e-5)


def test_neighbors_killed_mid_stream_leave_no_half_file_and_a_rerun_converges(night):
    config, _, wh, _ = night
    out = wh.work(DS, "item_neighbors")
    reference = hashlib.sha256(_table(out, ["item_id", "rank"]).to_pandas().to_csv().encode()).hexdigest()
    killed = _job(config, "neighbors", fault="neighbors.mid_stream")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (out / "part-0.parquet").exists()  # only the stream's temporary file: nothing reads it
    rerun = _job(config, "neighbors")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert [p.name for p in out.iterdir()] == ["part-0.parquet"]
    assert hashlib.sha256(_table(out, ["item_id", "rank"]).to_pandas().to_csv().encode()).hexdigest() == reference


def test_neighbors_killed_mid_spark_job_publish_nothing_and_a_rerun_on_spark_equals_in_process(night):
    config, _, wh, _ = night
    out = wh.work(DS, "item_neighbors")
    reference = _table(out, ["item_id", "rank"])
    env = {"LOOKALIKE_NEIGHBORS__SPARK_MIN_ITEMS": "1"}  # every item searched as Spark tasks of 64 queries
    killed = _job(config, "neighbors", fault="neighbors.mid_spark", env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not list(out.glob("*.parquet"))  # the tasks' parts wait in a folder nothing reads
    rerun = _job(config, "neighbors", env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert len(list(out.glob("part-*.parquet"))) > 1 and [p for p in out.iterdir() if p.is_dir()] == []
    assert _table(out, ["item_id", "rank"]).equals(reference)
    stats = json.loads(wh.work(DS, "neighbors_stats.json").read_text())
    assert stats["executor"] == "spark" and stats["spark"]["tasks"] == len(list(out.glob("part-*.parquet")))
    rerun = _job(config, "neighbors")  # back in-process: one file again
    assert rerun.returncode == 0 and [p.name for p in out.iterdir()] == ["part-0.parquet"]


def _user_recs(wh: Warehouse, cfg, *, shift: float) -> None:
    """A user-recommendation work area over the night's catalogue, made by hand."""
    items = pq.read_table(wh.work(DS, "catalog"), columns=["item_id", "status"]).to_pylist()
    on_sale = [r["item_id"] for r in items if r["status"] == "on_sale"][:3]
    recs = [{"ds": DS, "user_id": f"u{u}", "rank": r + 1, "item_id": item, "score": 0.9 - 0.1 * r + shift,
             "model_version": "pixrec"} for u in range(4) for r, item in enumerate(on_sale)]
    history = [{"ds": DS, "user_id": f"u{u}", "step": 1, "item_id": on_sale[0], "event": "click"} for u in range(4)]
    write_parquet(pa.Table.from_pylist(recs, schema=schemas.USER_RECOMMENDATIONS),
                  wh.fresh_work(DS, "user_recommendations") / "part-0.parquet")
    write_parquet(pa.Table.from_pylist(history, schema=schemas.USER_HISTORY),
                  wh.fresh_work(DS, "user_history") / "part-0.parquet")


def _publish_user_recs(config, fault=None):
    code = "import sys; from lookalike.config import load_config; from lookalike.publish.stage import " \
           f"publish_user_recs; publish_user_recs(load_config({str(config)!r}), {DS!r})"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    if fault:
        environ["LOOKALIKE_FAULT"] = fault
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, cwd=REPO,
                          timeout=300)


@pytest.mark.parametrize("store", ["local", "s3"])
@pytest.mark.parametrize("point", ["publish.between_tables", "publish.before_commit", "publish.during_switch",
                                   "publish.after_switch"])
def test_a_user_recommendation_publish_killed_at_any_point_keeps_the_published_one(night, point, store, request,
                                                                                 tmp_path, sample_dir):
    config, cfg, wh, _ = night
    if store == "s3":  # the same work area, the tables on moto's S3 server
        request.getfixturevalue("s3")
        config = write_config(tmp_path, sample_dir, neighbors={"k": 5}, warehouse=f"s3://models/userrec-{point}",
                              work_dir=str(wh.work_root))
        cfg = load_config(config, environ={})
        wh = Warehouse.of(cfg)
    _user_recs(wh, cfg, shift=0.0)
    assert _publish_user_recs(config).returncode == 0
    top = "select score from user_recommendations where user_id = 'u0' and rank = 1"
    assert run_query(wh, top)[1] == [(pytest.approx(0.9),)]
    _user_recs(wh, cfg, shift=0.05)
    killed = _publish_user_recs(config, fault=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    expected = 0.95 if point == "publish.after_switch" else 0.9  # the commit point was passed, or not
    assert run_query(wh, top)[1] == [(pytest.approx(expected),)]
    rerun = _publish_user_recs(config)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert run_query(wh, top)[1] == [(pytest.approx(0.95),)]
    assert run_query(wh, "select count(*) from user_recommendations_all")[1] == [(12,)]  # published once
    for table in ("user_recommendations", "user_history"):  # no orphan run
        runs = wh.objects.children(f"{table}/ds={DS}")
        assert runs == [f"run={wh.entries(table)[DS]['run_id']}"], (table, runs)
