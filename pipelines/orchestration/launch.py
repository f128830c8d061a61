"""How a DAG task runs a stage: in the task's own process, or as a job on other machinery.

- ``embed.launcher: spark-submit``: ``spark-submit --master <spark.master> … jobs/embed.py``, so
  the driver and executors are the cluster's, not the Airflow worker's;
- ``train.launcher: torchrun``: ``torchrun --nproc_per_node N -m lookalike.jobs.train`` on the GPU worker
  (one rank per GPU, DDP);
- ``extract.launcher: spark-submit``: ``spark-submit … jobs/extract.py``, photos decoded on the
  cluster's executors;
- ``in-process`` (the default, and the embedded demo): the stage runs inside the task, except
  training and extract inside a daemonic process (a Celery prefork worker's task): they start
  processes (DataLoader workers, decode processes), which a daemonic process may not have, so
  they run as ``python -m lookalike.jobs.train`` / ``python -m lookalike.jobs.extract``.

One code path: a job is the stage's own entrypoint in ``jobs/`` (``lookalike.orchestration.jobs``), the one an engineer runs by
hand, started with the task's environment (its config file and the run's overrides). It writes
its result, the dict the in-process call returns, to ``LOOKALIKE_RESULT_FILE``; the task reads
it back for XCom. Exit status 2 means bad input (the task fails without retrying); any other
failure goes through the DAG's retries.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import threading
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path
from typing import Callable, Mapping

from lookalike.config import CHOICES, Config, ConfigError
from lookalike.errors import BAD_INPUT, EXIT_STATUS, TRANSIENT, LookalikeError, TransientError
from lookalike.processes import die_with_parent

log = logging.getLogger("lookalike")

RESULT_ENV = "LOOKALIKE_RESULT_FILE"
IN_PROCESS = "in-process"
LAUNCHERS = {stage: CHOICES[f"{stage}.launcher"] for stage in ("extract", "embed", "train")}


class JobFailed(RuntimeError):
    """A launched job exited with an error that is not bad input (retried by the DAG)."""


def launcher_of(cfg: Config, stage: str) -> str:
    """``<stage>.launcher`` for the stages that have one (its value is checked when the config loads)."""
    return getattr(cfg, stage).launcher if stage in LAUNCHERS else IN_PROCESS


def spark_submit_bin(stage: str) -> str:
    """``$SPARK_HOME/bin/spark-submit``, else the one on PATH, else the one pyspark ships."""
    candidates = [Path(os.environ["SPARK_HOME"]) / "bin" / "spark-submit"] if os.environ.get("SPARK_HOME") else []
    on_path = shutil.which("spark-submit")
    candidates += [Path(on_path)] if on_path else []
    import pyspark

    candidates.append(Path(pyspark.__file__).parent / "bin" / "spark-submit")
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    raise ConfigError(f"{stage}.launcher is spark-submit but no spark-submit was found (SPARK_HOME, PATH, pyspark)")


def _in_daemonic_process() -> bool:
    import multiprocessing

    return bool(multiprocessing.current_process().daemon)


def _starts_processes(cfg: Config, stage: str) -> bool:
    """Whether the stage starts processes of its own: training's DataLoader workers, extract's
    decode processes."""
    return stage == "train" or (stage == "extract" and cfg.extract.decode_processes != 1)


def job_file(stage: str) -> str:
    """``jobs/<stage>.py`` of the installed package, the file spark-submit runs. Found, not
    imported: the library never imports ``lookalike.jobs``."""
    import importlib.util

    return str(Path(importlib.util.find_spec("lookalike.jobs").submodule_search_locations[0]) / f"{stage}.py")


def job_command(cfg: Config, stage: str, ds: str) -> list[str] | None:
    """The command that runs ``stage`` for ``ds`` as a job, or None to run it in-process."""
    launcher = launcher_of(cfg, stage)
    if launcher == IN_PROCESS and _starts_processes(cfg, stage) and _in_daemonic_process():
        return [sys.executable, "-m", f"lookalike.jobs.{stage}", "--ds", ds]
    if launcher == "spark-submit":
        from lookalike.spark import spark_conf

        conf = [arg for key, value in spark_conf(cfg).items() if key != "spark.master"
                for arg in ("--conf", f"{key}={value}")]
        return [spark_submit_bin(stage), "--master", cfg.spark.master, "--name", f"lookalike-{stage}-{ds}", *conf,
                job_file(stage), "--ds", ds]
    if launcher == "torchrun":
        ranks = str(cfg.train.nproc_per_node) if cfg.train.nproc_per_node > 0 else "gpu"
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", ranks,
                "-m", "lookalike.jobs.train", "--ds", ds]
    return None


def run_stage(cfg: Config, stage: str, ds: str, in_process: Callable[[], dict],
              environ: Mapping[str, str] | None = None) -> dict:
    """Run ``stage`` the way the config says; the stage's result dict either way."""
    command = job_command(cfg, stage, ds)
    if command is None:
        return in_process()
    how = launcher_of(cfg, stage)
    if how == IN_PROCESS:
        how = "subprocess (this task's process is daemonic and may not start the loader's processes)"
    log.info("%s for ds=%s as a %s job: %s", stage, ds, how, shlex.join(command))
    return run_job(stage, command, dict(os.environ if environ is None else environ))


def run_job(stage: str, command: list[str], environ: Mapping[str, str]) -> dict:
    """Run ``command`` as ``stage``'s job, in a process group of its own, relaying its output to
    the log; the result it writes to ``LOOKALIKE_RESULT_FILE``.

    The whole group goes with the task: when Airflow stops the task (cleared, marked failed:
    SIGTERM to the task's process), when the task times out or fails (any exception here), and
    when the task's process is killed outright (the group's leader gets SIGKILL through Linux's
    parent-death signal). Nothing of the job outlives it, not even a child left behind by a job
    that finished."""
    with tempfile.TemporaryDirectory(prefix=f"lookalike-{stage}-") as tmp:
        result = Path(tmp) / "result.json"
        env = {**environ, RESULT_ENV: str(result),
               "PYSPARK_PYTHON": environ.get("PYSPARK_PYTHON", sys.executable),
               "PYSPARK_DRIVER_PYTHON": environ.get("PYSPARK_DRIVER_PYTHON", sys.executable)}
        tail: deque[str] = deque(maxlen=40)
        with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace", start_new_session=True,
                              preexec_fn=die_with_parent) as job, _stopped_with_the_task(job, stage):
            def relay():  # the job's output into the task's log as it comes
                for line in job.stdout:
                    line = line.rstrip()
                    tail.append(line)
                    log.info("[%s] %s", stage, line)

            reader = threading.Thread(target=relay, name=f"{stage}-output", daemon=True)
            reader.start()
            job.wait()  # not the output's end: a child left behind may hold it open
        reader.join(timeout=10)
        if job.returncode == EXIT_STATUS[BAD_INPUT]:
            raise LookalikeError(f"the {stage} job rejected its input: {_last_error(tail)}")
        if job.returncode == EXIT_STATUS[TRANSIENT]:
            raise TransientError(f"the {stage} job hit a transient failure (retried): {_last_error(tail)}")
        if job.returncode != 0 or not result.is_file():
            raise JobFailed(f"the {stage} job exited with status {job.returncode} "
                            f"({shlex.join(command[:2])} …); its last lines:\n" + "\n".join(tail))
        return json.loads(result.read_text())


@contextlib.contextmanager
def _stopped_with_the_task(job: subprocess.Popen, stage: str, grace_s: float = 10.0):
    """Stop ``job``'s process group on SIGTERM (what Airflow sends a task it stops; its own
    handler, which calls the operator's ``on_kill``, still runs) or on any exception, and kill
    whatever is left of the group when the job ends."""
    previous = None

    def on_term(signum, frame):
        log.warning("the task is being stopped: stopping its %s job (process group %d)", stage, job.pid)
        _signal_group(job.pid, signal.SIGTERM)
        if callable(previous):
            previous(signum, frame)

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread: exceptions below still stop the job
        pass
    try:
        yield
    except BaseException:
        log.warning("stopping the %s job (process group %d)", stage, job.pid)
        _signal_group(job.pid, signal.SIGTERM)
        try:
            job.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        _signal_group(job.pid, signal.SIGKILL)  # what outlived the job, or a job that ignored SIGTERM
        job.wait()


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def write_result(result: dict) -> None:
    """In a launched job: hand ``result`` back to the task that started it (rank 0 only)."""
    path = os.environ.get(RESULT_ENV)
    if path and os.environ.get("RANK", "0") == "0":
        Path(path).write_text(json.dumps(result, default=str))


def _last_error(lines) -> str:
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or list(lines) or ["(no output)"])[-1]
