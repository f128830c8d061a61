"""The embed stage: the serving SigLIP model over the whole active catalogue, on Spark.

Each Spark Python worker loads the model once (module-level cache, worker reuse on) and runs
``siglip.embed_images`` over Arrow batches with one torch thread, so Spark's task slots, not
torch's thread pool, use the cores. An image that fails to decode becomes a quarantine row
with its reason; it never fails the job.
"""
from __future__ import annotations

import logging
from typing import Iterator

import pandas as pd
import pyarrow.parquet as pq

from pipelines import registry
from pipelines.config import Config
from pipelines.storage import ModelStore, Warehouse

log = logging.getLogger(__name__)

_MODEL_CACHE: dict = {}  # model path → LoadedModel, per Python worker


def _cached_model(path: str):
    if path not in _MODEL_CACHE:
        import torch

        from pipelines.siglip import load_model

        torch.set_num_threads(1)
        _MODEL_CACHE.clear()
        _MODEL_CACHE[path] = load_model(path)
    return _MODEL_CACHE[path]


def embed_frames(frames: Iterator[pd.DataFrame], model_path: str, batch_size: int) -> Iterator[pd.DataFrame]:
    """mapInPandas body: (item_id, image_sha256, image) batches → (item_id, image_sha256, embedding, error)."""
    import numpy as np

    from pipelines.siglip import embed_pixels

    loaded = _cached_model(model_path)
    pre = loaded.preprocess
    for frame in frames:
        pixels, ok, errors = [], [], [None] * len(frame)
        for i, data in enumerate(frame["image"].tolist()):
            try:
                pixels.append(pre.decode([data])[0])
                ok.append(i)
            except Exception as exc:  # any decode error is quarantined, never fatal
                errors[i] = f"image does not decode at embed time: {exc.__class__.__name__}: {exc}"
        vectors = embed_pixels(loaded.model, np.stack(pixels), pre, batch_size) if ok else []
        embeddings = [None] * len(frame)
        for i, v in zip(ok, vectors):
            embeddings[i] = v
        yield pd.DataFrame({"item_id": frame["item_id"].values, "image_sha256": frame["image_sha256"].values,
                            "embedding": embeddings, "error": errors})


def resolve_model(cfg: Config, model_uri: str | None) -> tuple[str, str]:
    """(version, path) of the model to embed with: the one given, else the registry's serving one."""
    store = ModelStore.at(cfg.models)
    if model_uri:
        from pipelines.siglip import load_model

        return load_model(model_uri).version, model_uri
    version, why = registry.resolve_serving_version(store)
    log.info("embed: using model %s (%s)", version, why)
    return version, str(store.version_dir(version))


def run_embed(cfg: Config, ds: str, model_uri: str | None = None) -> dict[str, str]:
    """Embed the ds's catalogue; returns {"item_embeddings": URI, "model_version": …}."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from pipelines.spark import spark_session

    wh = Warehouse.at(cfg.warehouse)
    catalog = wh.work(ds, "catalog")
    if not catalog.exists():
        raise FileNotFoundError(f"no catalogue for ds={ds} at {catalog}: run `lookalike extract --ds {ds}` first")
    version, path = resolve_model(cfg, model_uri)
    out = wh.fresh_work(ds, "item_embeddings")
    raw = wh.fresh_work(ds, "embed_output")
    quarantine = wh.fresh_work(ds, "embed_quarantine")

    spark = spark_session(cfg, app_name=f"lookalike-embed-{ds}")
    batch_size = cfg.embed.batch_size
    schema = T.StructType([
        T.StructField("item_id", T.StringType()), T.StructField("image_sha256", T.StringType()),
        T.StructField("embedding", T.ArrayType(T.FloatType())), T.StructField("error", T.StringType()),
    ])
    frame = spark.read.parquet(str(catalog)).select("item_id", "image_sha256", "image")
    slots = spark.sparkContext.defaultParallelism
    frame = frame.repartition(slots)  # one small file → one partition per core
    result = frame.mapInPandas(lambda it: embed_frames(it, path, batch_size), schema)
    result.write.mode("overwrite").parquet(str(raw))

    written = spark.read.parquet(str(raw))
    (written.where(F.col("error").isNull())
     .select(F.lit(ds).alias("ds"), "item_id", F.lit(version).alias("model_version"), "image_sha256", "embedding")
     .orderBy("item_id").coalesce(1).write.mode("overwrite").parquet(str(out)))
    (written.where(F.col("error").isNotNull())
     .select(F.lit(ds).alias("ds"), "item_id", F.lit("embed").alias("stage"), F.col("error").alias("reason"),
             F.lit(None).cast("string").alias("image_key"))
     .coalesce(1).write.mode("overwrite").parquet(str(quarantine)))
    n = pq.read_metadata(next(out.glob("*.parquet"))).num_rows
    log.info("embed %s: %d items embedded with %s", ds, n, version)
    return {"item_embeddings": str(out), "model_version": version, "model_uri": path}
