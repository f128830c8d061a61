"""``lookalike run``: the DAGs of a night, extract, finetune, nightly and user recs, through Airflow (``airflow dags test``)
for one ds.

On the embedded default Airflow keeps its metadata in SQLite under ``airflow.home``. The full
Airflow log goes to ``<airflow.home>/logs/``; the console gets the pipeline's own progress
lines, task boundaries and errors.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lookalike.config import CONFIG_ENV, Config
from lookalike.errors import LookalikeError
from lookalike.resources import dags_folder

# structlog console lines: "<timestamp> [<level>] <message> [<logger>] key=value …"
EXCEPTION_LINE = re.compile(r"^([\w.]+\.)?\w*(Error|Exception|Failed)\w*: ")
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT(\d\d:\d\d:\d\d))\S*\s+\[(\w+)\s*\]\s+(.*?)\s+\[([\w.]+)\]")


class DagRunFailed(LookalikeError):
    pass


def airflow_env(cfg: Config, config_path: str | None) -> dict[str, str]:
    env = dict(os.environ)
    home = Path(cfg.airflow.home)
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder()),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": env.get("AIRFLOW__CORE__PARALLELISM", "4"),
        "PYTHONUNBUFFERED": "1",
    })
    if config_path:
        env[CONFIG_ENV] = str(Path(config_path).resolve())
    return env


def _airflow_bin() -> str:
    candidate = Path(sys.executable).parent / "airflow"
    return str(candidate) if candidate.exists() else "airflow"


def _console_line(line: str) -> str | None:
    """The part of an Airflow log line worth showing on the console, or None."""
    m = LOG_LINE.match(line)
    if not m:
        return f"         {line.rstrip()}" if EXCEPTION_LINE.match(line) else None
    _, clock, level, message, logger = m.groups()
    if logger.startswith("lookalike"):
        return f"{clock}  {message}"
    if message.startswith("[DAG TEST] starting task_id="):
        return f"{clock}  ── task {message.split('task_id=')[1].split()[0]}"
    if level in ("error", "critical"):
        return f"{clock}  ERROR {message}"
    return None


# `lookalike run`: the DAGs a scheduler chains through Assets, run in that order for one ds, each
# with the task that must have run for it to count.
PIPELINE = (("lookalike_extract", "extract"), ("lookalike_finetune", "evaluate"), ("lookalike_nightly", "publish"),
            ("lookalike_user_recs", "publish"))


def prepare_airflow(cfg: Config, config_path: str | None = None) -> None:
    """Migrate Airflow's metadata database and create the ``gpu`` pool the training task runs in."""
    env = airflow_env(cfg, config_path)
    logs = Path(cfg.airflow.home) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    airflow = _airflow_bin()
    for step in (["db", "migrate"], ["pools", "set", "gpu", "1", "GPU trainers (one training run at a time)"]):
        done = subprocess.run([airflow, *step], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            log_path = logs / f"airflow-{step[0]}.log"
            log_path.write_text(done.stdout + done.stderr)
            raise DagRunFailed(f"`airflow {' '.join(step[:2])}` failed; see {log_path}")


@dataclass(frozen=True)
class Timing:
    """Where ``lookalike run``'s time went: a task, or Airflow's own work around a DAG's tasks."""
    dag_id: str
    task: str  # a task id, or "(airflow)": starting the DAG run before its first task and finishing after its last
    seconds: float


def run_pipeline(cfg: Config, ds: str, *, config_path: str | None = None, echo=print,
                 timings: list[Timing] | None = None) -> list[Path]:
    """Run every DAG of :data:`PIPELINE` for ``ds``; returns their log files, and appends where the time went
    to ``timings``. Raises DagRunFailed."""
    started = time.monotonic()
    prepare_airflow(cfg, config_path)
    if timings is not None:
        timings.append(Timing("(all)", "(airflow db migrate, pools)", round(time.monotonic() - started, 1)))
    return [run_dag(cfg, ds, config_path=config_path, dag_id=dag_id, last_task=last_task, echo=echo, timings=timings)
            for dag_id, last_task in PIPELINE]


def run_dag(cfg: Config, ds: str, *, config_path: str | None = None, dag_id: str = "lookalike_nightly",
            last_task: str = "publish", echo=print, timings: list[Timing] | None = None) -> Path:
    """Run ``dag_id`` for ``ds`` with ``airflow dags test``; returns the log file, and appends each task's
    seconds (and Airflow's around them) to ``timings``. Raises DagRunFailed.

    Airflow's metadata database must exist (:func:`prepare_airflow`)."""
    # No one answers an approval on the console: a night the drift gate refuses fails publish, as on the CLI
    env = {**airflow_env(cfg, config_path), "LOOKALIKE_PUBLISH__ASK_APPROVAL": "false"}
    log_path = Path(cfg.airflow.home) / "logs" / f"{dag_id}-{ds}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    echo(f"{dag_id}:")
    finished_ok, tasks_done, recent = False, set(), []
    began, task_started, spent = time.monotonic(), {}, {}
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([_airflow_bin(), "dags", "test", dag_id, ds], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            log_file.write(line)
            shown = _console_line(line)
            if shown and not any(shown.split(": ", 1)[-1] in earlier for earlier in recent):
                echo(shown)
                recent = (recent + [shown])[-5:]  # a traceback repeats the error line: show it once
            if "DagRun Finished" in line and "state=success" in line:
                finished_ok = True
            if "[DAG TEST] starting task_id=" in line:
                task_started[line.split("task_id=")[1].split()[0]] = time.monotonic()
            if "[DAG TEST] end task task_id=" in line:
                task = line.split("task_id=")[1].split()[0]
                tasks_done.add(task)
                if task in task_started:
                    spent[task] = round(time.monotonic() - task_started[task], 1)
        rc = proc.wait()
    if timings is not None:
        timings += [Timing(dag_id, task, seconds) for task, seconds in spent.items()]
        timings.append(Timing(dag_id, "(airflow)", round(time.monotonic() - began - sum(spent.values()), 1)))
    if rc != 0 or not finished_ok:
        raise DagRunFailed(f"DAG {dag_id} failed for ds={ds}; the full Airflow log is {log_path}")
    if last_task not in tasks_done:  # e.g. a ds before the DAG's start_date: Airflow skips every task
        raise DagRunFailed(f"DAG {dag_id} finished for ds={ds} without running {last_task!r}; "
                           f"see the full Airflow log {log_path}")
    return log_path
