"""The embed stage: the serving SigLIP model over the whole active catalogue, incrementally.

An item whose (item_id, image_sha256, model_version) already has a published embedding reuses
it (with a system that reads titles, its text's ``text_sha256`` too); a new item, a changed image
or text, or a new model version is (re)embedded. The rows to compute go
to Spark (``mapInPandas``: each Python worker loads the model once — module-level cache, worker
reuse on — and runs with one torch thread, so Spark's task slots use the cores). A handful of
rows (``embed.local_max_rows``) is embedded in-process by the same function instead: starting a
Spark job costs more than embedding a few hundred images. An image that fails to decode becomes
a quarantine row with its reason; it never fails the job.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lookalike import faults, schemas, serving
from lookalike.config import Config
from lookalike.errors import ConfigError
from lookalike.projection import fit_projection, load_projection, projection_path, save_projection
from lookalike.serving import Served
from lookalike.spark import task_device
from lookalike.atomic import atomic_path, atomic_write_text
from lookalike.storage import Warehouse, write_parquet
from lookalike.texts import TEXT_FIELDS

log = logging.getLogger(__name__)

PARTITION_BYTES = 16 << 20  # input split of one embedding task (about 4,000 stored 96 px photos)
_MODEL_CACHE: dict = {}  # (model path, device) → LoadedModel, per Python worker
_PROJECTION_CACHE: dict = {}  # projection path → Projection, per Python worker


def _cached_model(path: str, device: str):
    key = (path, device)
    if key not in _MODEL_CACHE:
        import torch

        from lookalike.serving import load_embedder

        if device == "cpu":
            torch.set_num_threads(1)  # Spark's task slots, not torch's thread pool, use the cores
        _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = load_embedder(path, device)
    return _MODEL_CACHE[key]


def _texts(template: str | None, frame: pd.DataFrame) -> list[str | None]:
    """Each row's text as the served system reads it (``serving.item_texts``), from the text fields the frame has."""
    if template is None:  # photos alone (a frame without text columns has no records to count)
        return [None] * len(frame)
    return serving.item_texts(template, frame[[f for f in TEXT_FIELDS if f in frame]].to_dict("records"))


def text_sha256(texts: list[str | None]) -> list[str | None]:
    return [None if t is None else hashlib.sha256(t.encode()).hexdigest() for t in texts]


def embed_frames(frames: Iterator[pd.DataFrame], model_path: str, batch_size: int,
                 projection: str | None = None) -> Iterator[pd.DataFrame]:
    """mapInPandas body: (item_id, image_sha256, image[, the text fields]) batches → (item_id,
    image_sha256, embedding, error, text_sha256).

    ``model_path`` is any served system's folder (pipelines/serving.py); one that reads titles
    reads each row's text fields (``TEXT_FIELDS``). With ``projection`` (a ``pca-<dim>.npz``) the
    vectors are projected and re-normalised.
    """
    embedder = _cached_model(model_path, task_device())
    if projection and projection not in _PROJECTION_CACHE:
        _PROJECTION_CACHE[projection] = load_projection(projection)
    for frame in frames:
        decoded, ok, errors = [], [], [None] * len(frame)
        texts = _texts(embedder.reads, frame)
        for i, data in enumerate(frame["image"].tolist()):
            try:
                decoded.append(embedder.decode(data))
                ok.append(i)
            except Exception as exc:  # any decode error is quarantined, never fatal
                errors[i] = f"image does not decode at embed time: {exc.__class__.__name__}: {exc}"
        vectors = embedder.embed(decoded, batch_size, [texts[i] for i in ok]) if ok else []
        if ok and projection:
            vectors = _PROJECTION_CACHE[projection].apply(vectors)
        embeddings = [None] * len(frame)
        for i, v in zip(ok, vectors):
            embeddings[i] = v
        yield pd.DataFrame({"item_id": frame["item_id"].values, "image_sha256": frame["image_sha256"].values,
                            "embedding": embeddings, "error": errors, "text_sha256": text_sha256(texts)})


def resolve_model(cfg: Config, ds: str, model_uri: str | None) -> Served:
    """The system to embed with: the SigLIP model given, else the one the nightly run serves."""
    if model_uri:
        from lookalike.objectstore import local_model_dir

        meta = local_model_dir(model_uri) / "lookalike.json"
        version = json.loads(meta.read_text()).get("version") if meta.exists() else None
        return Served("given", version or model_uri.rstrip("/").rsplit("/", 1)[-1], model_uri,
                      "a SigLIP model given by hand (--model)")
    served = serving.resolve(cfg, ds)
    log.info("embed: serving %s (%s)", served.version, served.why)
    return served


def _keys(table: pa.Table) -> pa.Array:
    """item_id + image_sha256 (+ text_sha256, where the table has it) as one string per row, for set membership."""
    parts = [table.column("item_id"), pc.fill_null(table.column("image_sha256"), "")]
    if "text_sha256" in table.column_names:
        parts.append(pc.fill_null(table.column("text_sha256"), ""))
    return pc.binary_join_element_wise(*parts, "\t")


def _catalog_keys(catalog, template: str | None) -> pa.Table:
    """The catalogue's (item_id, image_sha256[, text_sha256]): the text's hash when the served system reads titles."""
    if template is None:
        return pq.read_table(catalog, columns=["item_id", "image_sha256"])
    table = pq.read_table(catalog, columns=["item_id", "image_sha256", *TEXT_FIELDS])
    texts = _texts(template, table.to_pandas())
    return table.select(["item_id", "image_sha256"]).append_column("text_sha256",
                                                                  pa.array(text_sha256(texts), pa.string()))


def reusable_embeddings(wh: Warehouse, version: str, catalog_keys: pa.Table) -> pa.Table:
    """Published embeddings of ``version`` whose (item_id, image_sha256[, text_sha256]) is still in the catalogue.

    Looks at published partitions newest first and takes the first one holding ``version``
    (after a rollback, an older partition may hold the model that serves again).
    """
    wanted = _keys(catalog_keys)
    reads_text = "text_sha256" in catalog_keys.column_names
    columns = ["item_id", "image_sha256", "model_version", "embedding", *(["text_sha256"] if reads_text else [])]
    for ds in reversed(list(wh.entries("item_embeddings"))):
        if reads_text and "text_sha256" not in wh.partition_schema("item_embeddings", ds).names:
            continue  # written before systems read titles: none of its vectors did
        table = wh.read_partition("item_embeddings", ds, columns=columns, filters=[("model_version", "=", version)])
        if table.num_rows:
            return table.filter(pc.is_in(_keys(table), value_set=wanted))
    empty = schemas.ITEM_EMBEDDINGS.remove(0)  # none: drop "ds", keep the rest
    return pa.Table.from_pylist([], schema=empty if reads_text else empty.remove(empty.get_field_index("text_sha256")))


def _embeddings_schema(float16: bool) -> pa.Schema:
    return schemas.ITEM_EMBEDDINGS_FLOAT16 if float16 else schemas.ITEM_EMBEDDINGS


def _with_schema(ds: str, version: str, item_ids, shas, embeddings, float16: bool, texts=None) -> pa.Table:
    n = len(item_ids)
    schema = _embeddings_schema(float16)
    if isinstance(embeddings, (pa.Array, pa.ChunkedArray)):
        embeddings = embeddings.cast(schema.field("embedding").type)
    return pa.Table.from_pydict({"ds": [ds] * n, "item_id": item_ids, "model_version": [version] * n,
                                 "image_sha256": shas, "embedding": embeddings,
                                 "text_sha256": [None] * n if texts is None else texts}, schema=schema)


def _quarantine_rows(ds: str, item_ids, reasons) -> pa.Table:
    return pa.Table.from_pydict({"ds": [ds] * len(item_ids), "item_id": item_ids, "stage": ["embed"] * len(item_ids),
                                 "reason": reasons, "image_key": [None] * len(item_ids)}, schema=schemas.QUARANTINE)


def _store_results(tables, out, ds: str, version: str, float16: bool) -> tuple[int, list, list]:
    """Stream embedded rows into one Parquet file (memory: one batch); returns (computed, failed ids, reasons)."""
    computed, q_ids, q_reasons = 0, [], []
    with (atomic_path(out / "part-computed.parquet") as tmp,
          pq.ParquetWriter(tmp, _embeddings_schema(float16), compression="zstd") as writer):
        for table in tables:
            ok = pc.is_null(table.column("error"))
            good, bad = table.filter(ok), table.filter(pc.invert(ok))
            if good.num_rows:
                writer.write_table(_with_schema(ds, version, good.column("item_id"), good.column("image_sha256"),
                                                good.column("embedding"), float16, good.column("text_sha256")))
                computed += good.num_rows
            q_ids += bad.column("item_id").to_pylist()
            q_reasons += bad.column("error").to_pylist()
    return computed, q_ids, q_reasons


def _rows_to_embed(catalog, reused_keys: pa.Array, template: str | None) -> Iterator[pa.Table]:
    """Catalogue rows without a reusable embedding (with their text fields when the served system reads
    titles), one Parquet row group at a time (memory: one group)."""
    text = [*TEXT_FIELDS] if template is not None else []
    for file in sorted(catalog.glob("*.parquet")):
        parquet = pq.ParquetFile(file)
        for i in range(parquet.num_row_groups):
            group = parquet.read_row_group(i, columns=["item_id", "image_sha256", "image", *text])
            keyed = group.select(["item_id", "image_sha256"])
            if text:
                keyed = keyed.append_column("text_sha256", pa.array(text_sha256(_texts(template, group.to_pandas())),
                                                                    pa.string()))
            todo = group.filter(pc.invert(pc.is_in(_keys(keyed), value_set=reused_keys)))
            if todo.num_rows:
                yield todo


def _embed_on_spark(cfg: Config, todo_path, raw_path, path: str, ds: str, projection: str | None) -> None:
    from pyspark.sql import types as T

    from lookalike.spark import ship_package, spark_session

    spark = spark_session(cfg, app_name=f"lookalike-embed-{ds}")
    ship_package(spark, cfg, raw_path.parent)
    batch_size = cfg.embed.batch_size
    schema = T.StructType([
        T.StructField("item_id", T.StringType()), T.StructField("image_sha256", T.StringType()),
        T.StructField("embedding", T.ArrayType(T.FloatType())), T.StructField("error", T.StringType()),
        T.StructField("text_sha256", T.StringType()),
    ])
    # Split at Parquet row groups (extract writes 2,000 rows per group) into partitions of bounded
    # size — their number grows with the catalogue, the memory of each task does not — and never
    # repartition, which would shuffle every image through Spark.
    slots = spark.sparkContext.defaultParallelism
    size = sum(f.stat().st_size for f in todo_path.glob("*.parquet"))
    split = min(PARTITION_BYTES, max(1 << 20, size // (2 * slots)))  # small catalogues: still every slot
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(split))
    text = [*TEXT_FIELDS] if serving.text_weight_of(path) > 0 else []
    frame = spark.read.parquet(str(todo_path)).select("item_id", "image_sha256", "image", *text)
    if frame.rdd.getNumPartitions() < slots:  # a small catalogue in one row group: spread it
        frame = frame.repartition(slots)
    faults.point_when("embed.mid_spark", lambda: bool(spark.sparkContext.statusTracker().getActiveStageIds()))
    frame.mapInPandas(lambda it: embed_frames(it, path, batch_size, projection), schema).write.mode("overwrite").parquet(str(raw_path))


def _ensure_projection(cfg: Config, catalog, model_path: str, dim: int) -> str | None:
    """The served system's PCA to ``dim``, fitted on a seeded catalogue sample the first time;
    None for a system whose vectors are no wider than ``dim`` (the image baseline)."""
    if model_path.startswith("s3://"):
        raise ConfigError("embed.pca_dim with a production model on s3:// is not supported: "
                          "register the model in a local models directory, or set embed.pca_dim: 0")
    path = projection_path(model_path, dim)
    if path.exists():
        return str(path)
    import pyarrow.dataset as pads

    dataset = pads.dataset(catalog)
    rows = dataset.count_rows()
    picked = np.sort(np.random.default_rng(0).permutation(rows)[: cfg.embed.pca_sample])
    text = [*TEXT_FIELDS] if serving.text_weight_of(model_path) > 0 else []
    sample = dataset.take(pa.array(picked), columns=["item_id", "image_sha256", "image", *text])  # only those rows
    frames = (b.to_pandas() for b in sample.to_batches(max_chunksize=cfg.embed.arrow_batch_rows))
    vectors = np.stack([v for f in embed_frames(frames, model_path, cfg.embed.batch_size)
                        for v in f["embedding"] if v is not None])
    if vectors.shape[1] <= dim:
        log.info("embed: embed.pca_dim=%d left out: the served vectors have %d dimensions", dim, vectors.shape[1])
        return None
    save_projection(fit_projection(vectors, dim), path)
    log.info("embed: fitted PCA to %d dimensions on %d catalogue items → %s", dim, len(vectors), path)
    return str(path)


def run_embed(cfg: Config, ds: str, model_uri: str | None = None) -> dict:
    """Embed the ds's catalogue; returns {"item_embeddings": URI, "model_version", "reused", "computed", …}."""
    wh = Warehouse.of(cfg)
    catalog = wh.work(ds, "catalog")
    if not catalog.exists():
        raise FileNotFoundError(f"no catalogue for ds={ds} at {catalog}: run `lookalike extract --ds {ds}` first")
    served = resolve_model(cfg, ds, model_uri)
    path, projection, version = served.path, None, served.version
    if cfg.embed.pca_dim:
        projection = _ensure_projection(cfg, catalog, path, cfg.embed.pca_dim)
        if projection:
            version = f"{served.version}+pca{cfg.embed.pca_dim}"  # another vector space, another version
    f16 = cfg.embed.float16
    out = wh.fresh_work(ds, "item_embeddings")
    quarantine = wh.fresh_work(ds, "embed_quarantine")

    template = serving.served_template(path)
    keys = _catalog_keys(catalog, template)
    reused = reusable_embeddings(wh, version, keys)
    if reused.num_rows:
        write_parquet(_with_schema(ds, version, reused.column("item_id"), reused.column("image_sha256"),
                                   reused.column("embedding"), f16,
                                   reused.column("text_sha256") if template else None), out / "part-reused.parquet")
    n_todo = keys.num_rows - reused.num_rows
    executor, computed, q_ids, q_reasons = "none", 0, [], []
    if n_todo:
        if n_todo <= cfg.embed.local_max_rows:
            executor = "in-process"
            frames = (t.to_pandas() for t in _rows_to_embed(catalog, _keys(reused), template))
            tables = (pa.Table.from_pandas(f, preserve_index=False)
                      for f in embed_frames(frames, path, cfg.embed.batch_size, projection))
        else:
            executor = "spark"
            todo_path = catalog  # nothing reusable: Spark reads the catalogue as it is
            if reused.num_rows:  # else only the rows to compute, streamed row group by row group
                todo_path = wh.fresh_work(ds, "embed_todo")
                parts = _rows_to_embed(catalog, _keys(reused), template)
                first = next(parts)
                with pq.ParquetWriter(todo_path / "part-0.parquet", first.schema, compression="zstd") as writer:
                    for part in itertools.chain([first], parts):
                        writer.write_table(part)
            raw = wh.fresh_work(ds, "embed_output")
            _embed_on_spark(cfg, todo_path, raw, path, ds, projection)
            tables = (pa.Table.from_batches([b]) for f in sorted(raw.glob("*.parquet"))
                      for b in pq.ParquetFile(f).iter_batches(batch_size=4096))  # memory: one batch
        computed, q_ids, q_reasons = _store_results(tables, out, ds, version, f16)
    write_parquet(_quarantine_rows(ds, q_ids, q_reasons), quarantine / "part-0.parquet")
    stats = {"model_version": version, "served": served.to_dict(), "model_path": path, "projection": projection,
             "text_template": template,
             "catalogue": keys.num_rows, "reused": reused.num_rows,
             "computed": computed, "quarantined": len(q_ids), "executor": executor}
    atomic_write_text(wh.work(ds, "embed_stats.json"), json.dumps(stats, indent=2))
    log.info("embed %s: %d items — %d reused, %d computed (%s), %d quarantined; serving %s", ds, keys.num_rows,
             stats["reused"], stats["computed"], executor, stats["quarantined"], version)
    return {"item_embeddings": str(out), "model_uri": path, **stats}
