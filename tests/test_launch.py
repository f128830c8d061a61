"""Execution modes chosen by config: the same stages run as jobs, `torchrun` for training (two
gloo ranks on the CPU here) and `spark-submit` for embedding (a local[2] master here), and hand
their results back to the task that launched them."""
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from lookalike import registry
from lookalike.config import ConfigError, load_config
from lookalike.embed.stage import run_embed
from lookalike.errors import LookalikeError
from lookalike.evaluate.stage import run_evaluate
from lookalike.extract.stage import run_extract
from lookalike.orchestration.launch import job_command, run_stage
from lookalike.storage import ModelStore
from tests.conftest import DS, write_config

pytestmark = pytest.mark.slow


def _never(*_):
    raise AssertionError("the stage ran in-process although the config names a launcher")


def test_training_under_torchrun_and_embedding_under_spark_submit(tmp_path, sample_dir, monkeypatch, caplog):
    config = write_config(tmp_path, sample_dir, train__launcher="torchrun", train__nproc_per_node=2,
                          train__loader_workers=0, train__threads=1,
                          embed__launcher="spark-submit", embed__local_max_rows=0)
    monkeypatch.setenv("LOOKALIKE_CONFIG", str(config))  # what a DAG task has
    cfg = load_config()
    run_extract(cfg, DS)

    caplog.set_level("INFO", logger="lookalike")
    trained = run_stage(cfg, "train", DS, _never)
    assert trained["model_uri"] and trained["model_version"]
    assert "torch.distributed.run --standalone --nproc_per_node 2" in caplog.text
    assert "2 rank(s) on cpu" in caplog.text, caplog.text[-3000:]
    run_evaluate(cfg, DS, trained["model_uri"])
    registry.promote(ModelStore.at(cfg.models), trained["model_version"])  # served, whatever the sample's log says

    embedded = run_stage(cfg, "embed", DS, _never)
    assert embedded["model_version"] == trained["model_version"]
    assert embedded["executor"] == "spark", embedded
    assert "jobs/embed.py --ds " + DS in caplog.text
    by_job = _vectors(embedded["item_embeddings"])
    # The same stage in-process (Spark skipped) gives the same vectors.
    in_process = run_embed(load_config(environ={"LOOKALIKE_CONFIG": str(config),
                                                "LOOKALIKE_EMBED__LAUNCHER": "in-process",
                                                "LOOKALIKE_EMBED__LOCAL_MAX_ROWS": "100000"}), DS)
    assert in_process["executor"] == "in-process"
    here = _vectors(in_process["item_embeddings"])
    assert by_job.keys() == here.keys() and len(here) == embedded["catalogue"]
    assert all(np.allclose(by_job[item], here[item], atol=1e-4) for item in here)


def _vectors(path: str) -> dict:
    table = pq.read_table(path, columns=["item_id", "embedding"], partitioning=None).to_pydict()
    return dict(zip(table["item_id"], (np.asarray(v) for v in table["embedding"])))


def test_a_job_that_rejects_its_input_fails_without_retry_and_a_bad_launcher_is_a_config_error(
        tmp_path, sample_dir, monkeypatch):
    config = write_config(tmp_path, sample_dir, embed__launcher="spark-submit")
    monkeypatch.setenv("LOOKALIKE_CONFIG", str(config))
    cfg = load_config()
    with pytest.raises(LookalikeError, match="the embed job rejected its input"):
        run_stage(cfg, "embed", "2026-01-01", _never)  # nothing was extracted for that day

    with pytest.raises(ConfigError, match="train.launcher must be one of in-process, torchrun"):  # when it loads
        load_config(environ={"LOOKALIKE_CONFIG": str(config), "LOOKALIKE_TRAIN__LAUNCHER": "mpirun"})
    assert job_command(load_config(environ={}), "embed", DS) is None  # the embedded default: in-process


def _job_command_in_a_daemon(cfg, queue):
    processes = dataclasses.replace(cfg, extract=dataclasses.replace(cfg.extract, decode_processes=2))
    queue.put([job_command(cfg, "train", DS), job_command(processes, "extract", DS)])
    queue.put(job_command(cfg, "extract", DS))


def test_training_in_a_daemonic_process_runs_as_a_job_since_its_loader_needs_processes(tmp_path, sample_dir):
    # A Celery prefork worker runs each task in a daemonic process, which may not start the
    # DataLoader's worker processes ("daemonic processes are not allowed to have children").
    import multiprocessing

    cfg = load_config(write_config(tmp_path, sample_dir), environ={})
    assert job_command(cfg, "train", DS) is None  # a plain process trains in-process
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    daemon = context.Process(target=_job_command_in_a_daemon, args=(cfg, queue), daemon=True)
    daemon.start()
    train, extract = queue.get(timeout=60)
    one_process_extract = queue.get(timeout=60)
    daemon.join(timeout=60)
    assert train[1:] == ["-m", "lookalike.jobs.train", "--ds", DS]
    assert extract[1:] == ["-m", "lookalike.jobs.extract", "--ds", DS]  # its decode processes, likewise
    assert one_process_extract is None  # extract.decode_processes: 1 (the default) starts none
    assert job_command(cfg, "embed", DS) is None  # embedding starts no processes of its own


def _processes_with(marker: str) -> list:
    """The `sleep <seconds>` processes whose argument starts with ``marker``."""
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if len(cmdline) == 2 and cmdline[0] == "sleep" and cmdline[1].startswith(marker):
            found.append(process)
    return found


def _gone(marker: str, timeout: float = 20.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _processes_with(marker):
            return True
        time.sleep(0.2)
    return False


def test_a_finished_job_leaves_no_process_behind():
    from lookalike.orchestration.launch import run_job

    script = ("import os, subprocess; subprocess.Popen(['sleep', '300.101']); "
              "open(os.environ['LOOKALIKE_RESULT_FILE'], 'w').write('{\"ok\": 1}')")
    assert run_job("test", [sys.executable, "-c", script], dict(os.environ)) == {"ok": 1}
    assert _gone("300.101")


def test_an_exception_in_the_task_stops_its_job_and_the_jobs_children():
    # What a task's execution_timeout does: an exception raised while the job runs.
    import signal

    from lookalike.orchestration.launch import run_job

    def timeout(signum, frame):
        raise TimeoutError("execution_timeout")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(2)
    try:
        with pytest.raises(TimeoutError):
            run_job("test", ["bash", "-c", "sleep 300.202 & sleep 300.203; wait"], dict(os.environ))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert _gone("300.20")


def test_sigterm_to_the_task_stops_its_whole_job():
    # What Airflow sends a running task that is cleared or marked failed.
    import signal
    import time

    harness = subprocess.Popen([sys.executable, "-c",
                                "import os; from lookalike.orchestration.launch import run_job; "
                                "run_job('test', ['bash', '-c', 'sleep 300.303 & sleep 300.304; wait'], dict(os.environ))"],
                               cwd=Path(__file__).resolve().parents[1], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while len(_processes_with("300.30")) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(_processes_with("300.30")) == 2
    harness.send_signal(signal.SIGTERM)
    _, stderr = harness.communicate(timeout=30)
    assert harness.returncode != 0 and "JobFailed" in stderr  # the job was stopped, so the task fails
    assert _gone("300.30")
