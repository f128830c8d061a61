"""The weekly lookalike_finetune run, as the scheduler starts it: its logical date (a Sunday) has no snapshot of
its own, which only the next night's extract writes. It trains and evaluates on the newest finished snapshot
on or before that date, and says so; with none at all it fails at once naming what to run."""
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

from lookalike.config import load_config
from lookalike.extract.stage import run_extract
from lookalike.orchestration.orchestrate import airflow_env
from lookalike.storage import ModelStore
from tests.conftest import DS, write_config


def _dags_test(cfg, config, ds: str) -> subprocess.CompletedProcess:
    env = airflow_env(cfg, str(config))
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, check=True, timeout=300)
    return subprocess.run([airflow, "dags", "test", "lookalike_finetune", ds], env=env, capture_output=True,
                          text=True, timeout=900)


def test_a_weekly_run_trains_on_the_newest_snapshot_before_its_day(tmp_path, sample_dir):
    config = write_config(tmp_path, sample_dir)
    cfg = load_config(config, environ={})
    sunday = (date.fromisoformat(DS) + timedelta(days=3)).isoformat()
    early = _dags_test(cfg, config, sunday)
    assert "no finished extract on or before" in early.stdout + early.stderr
    assert not ModelStore.at(cfg.models).registry_path().exists()
    run_extract(cfg, DS)
    run = _dags_test(cfg, config, sunday)
    logs = run.stdout + run.stderr
    assert run.returncode == 0, logs[-4000:]
    assert f"training and evaluating on the newest one, ds={DS}" in logs
    from lookalike import registry

    trained = registry.list_versions(ModelStore.at(cfg.models))
    assert [v["snapshot"]["ds"] for v in trained] == [DS]
