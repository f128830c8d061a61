"""One place that builds the SparkSession from Lookalike's config."""
from __future__ import annotations

import os
import sys

from lookalike.config import Config
from lookalike.resources import script_path


def spark_conf(cfg: Config) -> dict[str, str]:
    """The Spark settings Lookalike's jobs need, from its config (also printed by
    ``lookalike spark-conf`` for spark-submit).

    With ``spark.executor_gpus`` > 0 every embedding task gets one whole GPU through Spark's
    resource scheduling, so the number of concurrent tasks per executor equals its GPUs.
    """
    conf = {
        "spark.master": cfg.spark.master,
        "spark.driver.memory": cfg.spark.driver_memory,
        "spark.driver.extraJavaOptions": cfg.spark.driver_java_options,
        "spark.python.worker.reuse": "true",  # the model loads once per Python worker
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(cfg.embed.arrow_batch_rows),
        "spark.sql.shuffle.partitions": "8",
        "spark.sql.session.timeZone": "UTC",
        "spark.executorEnv.OMP_NUM_THREADS": "1",  # one torch thread per task on CPU
    }
    if cfg.spark.executor_memory:
        conf["spark.executor.memory"] = cfg.spark.executor_memory
    if cfg.spark.executor_gpus > 0:
        conf.update({
            "spark.executor.resource.gpu.amount": str(cfg.spark.executor_gpus),
            "spark.task.resource.gpu.amount": "1",
            "spark.executor.resource.gpu.discoveryScript": cfg.spark.gpu_discovery_script or str(script_path("gpu-discovery.sh")),
            "spark.executorEnv.OMP_NUM_THREADS": "4",  # decoding threads beside the GPU
        })
    return conf


def spark_session(cfg: Config, app_name: str = "lookalike"):
    """A SparkSession on ``spark.master`` whose Python workers run this interpreter.

    Python workers are reused across tasks (``spark.python.worker.reuse``) so each loads the
    model once; Arrow batches are bounded so worker memory does not grow with the catalogue.
    """
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name).config("spark.ui.enabled", "false")
    for key, value in spark_conf(cfg).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def ship_package(spark, cfg: Config, folder) -> None:
    """On a cluster, the ``lookalike`` package as a zip for ``addPyFile`` (the executors' Python has
    the dependencies but not this package); a local master's workers import it from here. The zip
    holds the package under its installed name, whichever folder it is imported from."""
    if cfg.spark.master.startswith("local"):
        return
    import zipfile
    from pathlib import Path

    package = Path(__file__).resolve().parent
    archive = Path(folder) / "lookalike-package.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(package.rglob("*.py")):
            if "__pycache__" not in path.parts:
                zf.write(path, Path("lookalike", path.relative_to(package)).as_posix())
    spark.sparkContext.addPyFile(str(archive))


def task_device() -> str:
    """The GPU Spark assigned to this task (``cuda:N``), or ``cpu``."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    gpu = ctx.resources().get("gpu") if ctx is not None else None
    return f"cuda:{gpu.addresses[0]}" if gpu is not None and gpu.addresses else "cpu"
