"""One place that builds the SparkSession from Lookalike's config."""
from __future__ import annotations

import os
import sys

from pipelines.config import Config


def spark_session(cfg: Config, app_name: str = "lookalike"):
    """A SparkSession on ``spark.master`` whose Python workers run this interpreter.

    Python workers are reused across tasks (``spark.python.worker.reuse``) so each loads the
    model once; Arrow batches are bounded so worker memory does not grow with the catalogue.
    """
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.appName(app_name)
        .master(cfg.spark.master)
        .config("spark.driver.memory", cfg.spark.driver_memory)
        .config("spark.python.worker.reuse", "true")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.embed.arrow_batch_rows))
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.executorEnv.OMP_NUM_THREADS", "1")
    )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
