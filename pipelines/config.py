"""Lookalike's configuration: one YAML file, one typed object per stage.

Every key can be overridden by an environment variable ``LOOKALIKE_<SECTION>__<KEY>``
(``LOOKALIKE_NEIGHBORS__K=10``) or, for top-level keys, ``LOOKALIKE_<KEY>``
(``LOOKALIKE_WAREHOUSE=/data/wh``). Unknown keys are an error, never silently ignored.
Without a file the embedded default is used: the sample marketplace under ``var/sample``,
the warehouse under ``var/warehouse``, Spark in local mode, CPU.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import typing
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import yaml

from lookalike.errors import ConfigError
from lookalike import tables
from lookalike.systems import PRODUCTION, SERVE_NAMES
from lookalike.workarea import default_root

ENV_PREFIX = "LOOKALIKE_"
CONFIG_ENV = "LOOKALIKE_CONFIG"  # path of the config file, read by DAG tasks and jobs
# Per-process settings that are not config keys: the model cache of a host, test crash points.
NOT_CONFIG_ENV = {CONFIG_ENV, "LOOKALIKE_CACHE_DIR", "LOOKALIKE_FAULT", "LOOKALIKE_FAULT_ONCE", "LOOKALIKE_HOLD",
                  "LOOKALIKE_RESULT_FILE"}


def key(default, *, choices: tuple[str, ...] = (), within: str = "", path: bool = False):
    """A config key whose value is checked when the config loads, declared beside its field, so a
    typo fails at once with the key named, not hours later inside a stage: ``choices``, the names it
    may take; ``within``, an interval such as ``"[0, 1]"`` or ``"(0, inf)"``; ``path``, a location,
    resolved against the config file's folder (the working directory for the embedded default)
    unless absolute or a URL. ``CHOICES``, ``INTERVALS`` and the path keys are read from here."""
    if within:
        low, high = (float(x) for x in within.strip("[]()").split(","))
        within = (low, high, within[0] == "[", within[-1] == "]")
    return field(default=default, metadata={"choices": tuple(choices), "within": within or None, "path": path})


@dataclass(frozen=True)
class SourceConfig:
    """The marketplace's listings database and image store (docs/pipeline.md, "Source contract")."""
    url: str = "sqlite:///var/sample/marketplace.db"  # any SQLAlchemy URL
    images: str = key("var/sample/images", path=True)  # image store root: a directory or s3://bucket/prefix
    extract_sql: str = key("", path=True)  # folder of extract templates; empty = the shipped sql/extract


@dataclass(frozen=True)
class ModelConfig:
    """What training starts from."""
    # A named architecture trained from scratch ("tiny", "small", "siglip-base-patch16-224", …),
    # a Hugging Face model name (org/name, through the Hugging Face cache) or a checkpoint
    # directory, local or s3://.
    init: str = "small"


@dataclass(frozen=True)
class ExtractConfig:
    """Reading the source into the ds's snapshot, catalogue and event log (pipelines/extract/)."""
    image_size: int = 96  # longest side of the stored, resized image (px)
    max_image_bytes: int = 20_000_000  # larger source files are quarantined unread
    max_image_pixels: int = 50_000_000  # decompression-bomb guard (width x height)
    min_image_side: int = 16  # smaller images carry no usable signal
    max_quarantine_share: float = 0.05  # a larger share of rejected rows fails the ds before anything is published
    decode_processes: int = key(1, within="[0, inf)")  # processes decoding photos; 1: the extract's own threads, 0: one per core
    spark_min_rows: int = key(0, within="[0, inf)")  # > 0: from this many listings staged on, photos are fetched and decoded as Spark tasks
    launcher: str = key("in-process", choices=("in-process", "spark-submit"))  # how a DAG task runs extract: "in-process", or "spark-submit" to spark.master
    # Events older than this many days before the earlier night's extract are reused from it, not read
    # again; younger ones are read again, so events logged up to this late are picked up. At least the
    # log window (userrec.log_days) reads the whole log every night.
    events_refetch_days: int = key(3, within="[0, inf)")


@dataclass(frozen=True)
class TrainConfig:
    """Fine-tuning SigLIP on the snapshot's image–title pairs (pipelines/train/; docs/models.md)."""
    seed: int = 0  # sampling, initialisation and the held-out split
    # The budget follows the data: `epochs` passes over the snapshot's training pairs, stopped early
    # when held-out image→title Recall@5 stops improving, capped by wall-clock `minutes`
    # (benchmarks/real_photo_quality.py --defaults; docs/models.md).
    epochs: float = 60.0
    max_steps: int = 0  # > 0: this many optimizer steps instead of `epochs`
    minutes: float = 40.0  # wall-clock cap, whichever budget binds first
    validate_every_epochs: float = 2.0  # held-out recall checks (the learning curve in the model's metrics)
    patience: int = 4  # checks without a Recall@5 gain that stop training (0: never stop early)
    batch_size: int = 128  # pairs per optimizer step (the sigmoid loss scores every pair of the batch)
    learning_rate: float = 2e-3  # AdamW's peak rate, after the warmup, cosine-decayed to the end
    weight_decay: float = 0.05  # AdamW
    warmup_steps: int = 100  # linear warmup of the learning rate
    # The text paired with each photo: {title}, {category}, {brand}, {description}, {price}
    text_template: str = "{title} | {category}"
    max_text_length: int = 24  # tokens; SigLIP pools the last token, so texts pad to this
    vocab_size: int = 4000  # the tokenizer trained on the titles when training from scratch
    val_fraction: float = 0.1  # items held out (stable by id) for image→title Recall@1/@5
    colour_augment: float = key(0.5, within="[0, 1]")  # share of photos recoloured (half channel-permuted, half greyscale)
    keep_aspect: bool = False  # resize the longest side and pad, instead of stretching to a square
    crop_scale: float = key(0.4, within="(0, 1]")  # random resized crops of at least this share of the photo's area (1: shifts only)
    image_positive: float = key(0.0, within="[0, inf)")  # > 0: weight of an image–image term, two views of a photo as positives (SLIP)
    patch_dropout: float = key(0.5, within="[0, 1)")  # share of image tokens dropped per photo while training (FLIP; 0: every token)
    text_positives: bool = True  # pairs whose normalised texts are identical count as positives
    val_max_items: int = 2000  # held-out pairs scored for image→title recall (a stable subset)
    precision: str = key("auto", choices=("auto", "bf16", "fp32"))  # auto: bf16 autocast on CUDA, fp32 on CPU | bf16 | fp32
    grad_accum: int = 1  # micro-steps per optimizer step; batch_size is the global batch across them and all ranks
    clip_norm: float = 1.0  # gradient clipping (0 = off)
    freeze_text: bool = False  # train the vision tower only
    freeze_vision_layers: int = 0  # freeze the patch embedding and this many lower vision blocks
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    fused_optimizer: bool = True  # one fused AdamW kernel (CUDA and CPU)
    compile: bool = False  # torch.compile the model (pays back its compile time on long runs only)
    channels_last: bool = False  # NHWC pixel layout for the patch convolution
    checkpoint_every: int = 200  # steps between resumable checkpoints (0 = none)
    decoded_cache_mb: int = 2048  # keep decoded photos in shared memory when the snapshot fits (decode once)
    loader_workers: int = -1  # DataLoader processes decoding photos per rank; -1 = cores per rank - 1 (min 1)
    threads: int = 0  # torch threads; 0 = all cores
    # How a DAG task runs training: "in-process", or "torchrun" (data-parallel, nproc_per_node ranks)
    launcher: str = key("in-process", choices=("in-process", "torchrun"))
    nproc_per_node: int = 0  # torchrun ranks on the worker; 0 = one per visible GPU


@dataclass(frozen=True)
class EmbedConfig:
    """Embedding the catalogue with the serving model, incrementally, on Spark (pipelines/embed/)."""
    batch_size: int = 256  # photos per model call
    arrow_batch_rows: int = 1024  # spark.sql.execution.arrow.maxRecordsPerBatch
    local_max_rows: int = 2000  # at most this many items to (re)compute: embed in-process, skip Spark
    pca_dim: int = 0  # > 0: project to this many dimensions (PCA fitted once per model version)
    pca_sample: int = 10000  # catalogue items the PCA is fitted on
    float16: bool = False  # store embeddings as float16 (half the bytes)
    launcher: str = key("in-process", choices=("in-process", "spark-submit"))  # how a DAG task runs embedding: "in-process", or "spark-submit" to spark.master
    # The share t of an item's title in its served vector, unit((1 − t)·photo + t·title), both from the
    # production SigLIP: -1 takes the weight the evaluation chose among evaluate.text_weights (0 until a
    # model is promoted); 0 serves photos alone; above 0 that share, whatever the evaluation chose
    text_weight: float = key(-1.0, within="[-1, 1]")


@dataclass(frozen=True)
class NeighborsConfig:
    """The all-items nearest-neighbour search (pipelines/neighbors/)."""
    k: int = 20  # neighbours per item
    index: str = key("auto", choices=("auto", "flat", "ivf", "ivfpq", "hnsw", "torch"))  # auto | flat | ivf | ivfpq | hnsw | torch (see pipelines/neighbors/search.py)
    recall_target: float = 0.95  # approximate indexes are tuned to this recall@k against exact search
    recall_sample: int = 2000  # queries the recall is measured on, every run
    exact_max_items: int = 50_000  # auto: exact search up to this many candidates
    memory_budget_mb: int = 0  # auto: IVF-PQ when two copies of the vectors exceed this (0 = no budget)
    block_size: int = 16_384  # queries searched and written per block
    same_category: bool = False  # neighbours only from the item's own category
    exclude_same_seller: bool = False  # no neighbour from the item's seller
    drop_same_image: bool = False  # no neighbour with the identical photo (always flagged in same_image)
    device: str = key("auto", choices=("auto", "cpu", "cuda"))  # auto: CUDA when torch sees one | cpu | cuda
    threads: int = 0  # FAISS threads; 0 = all cores (1 per Spark task on Spark)
    spark_min_items: int = 0  # > 0: from this many items on, the all-items search runs as Spark tasks on spark.master
    seed: int = 0  # the index's training sample and the recall queries
    # Each list keeps this many neighbours beyond k (and a bar below which nothing was missed), so the
    # next night can update it from what changed instead of searching every item again
    margin: int = key(10, within="[0, inf)")
    # The next night updates the lists when at most this share of the catalogue was added, changed or
    # removed (and the served model and the neighbour settings are the same); more: a full rebuild
    incremental_max_change: float = key(0.1, within="[0, 1]")
    full_rebuild_days: int = key(7, within="[1, inf)")  # a full rebuild at least this often (days since the last one)
    # Approximate indexes: the kept lists were searched in an index trained on the night of the last full
    # rebuild; once this share of the catalogue changed since then, rebuild in full (a new index)
    max_changed_since_full: float = key(0.3, within="[0, 1]")


@dataclass(frozen=True)
class EvaluateConfig:
    """The offline evaluation on logged clicks and the promotion decision (pipelines/evaluate/)."""
    log_days: int = 30  # held-out interaction window [ds - log_days, ds)
    baseline_dim: int = 64  # PCA size of the hand-made image baseline
    min_candidates: int = 2  # a source item needs this many shown items to be scored
    # Promote only when the 95% paired-bootstrap interval of the nDCG@5 gain over production, on the
    # same queries, has its low end above minus this (0: the candidate must beat production beyond noise)
    promote_tolerance: float = 0.0
    # Weights w of the model in the served blend [√w·model, √(1−w)·image baseline] tried on the log;
    # the best blend is promoted instead of the model alone when it ranks better. Empty: model alone.
    hybrid_weights: str = "0.3,0.5,0.7"
    # Shares t of the title in the model's item vector, unit((1 − t)·photo + t·title), tried on the log
    # alone and in every blend; the best is promoted with the model (embed.text_weight). Empty: photos only
    text_weights: str = "0.3,0.5,0.7"
    category_items: int = 3000  # no module clicks yet: held-out listings scored by category, colour, product group, co-purchase
    # The most any facet@5 (category, colour, product group, co-purchase) of a served system may trail the
    # image baseline's by, whatever it gains on the others: a system losing more is not served
    max_facet_loss: float = key(0.05, within="[0, 1]")


@dataclass(frozen=True)
class UserRecConfig:
    """The PixRec-style user model (see pipelines/userrec/)."""
    log_days: int = 90  # interaction history used: [ds - log_days, ds)
    k: int = 20  # recommendations per user
    max_len: int = 20  # L: the user tower reads the last L items
    dim: int = 64  # the shared user/item space
    fusion: str = key("gated", choices=("gated", "concat"))  # gated (a learned gate between image and text) | concat (concatenation + MLP)
    user_tower: str = key("transformer", choices=("transformer", "gru"))  # transformer (causal) | gru
    layers: int = 2  # user tower layers
    heads: int = 2  # attention heads of the transformer tower
    dropout: float = 0.1  # in both towers while training
    # InfoNCE temperature τ. PixRec used 0.5; over unit vectors that bounds the logits to ±2 and on
    # the sample marketplace nothing was learned (Recall@10 0.001); 0.05 learns.
    temperature: float = 0.05
    weight_user_item: float = 1.0  # user → next item
    weight_item_item: float = 0.5  # co-interacted item pairs
    weight_image_text: float = 0.0  # image ↔ text of the same item (0.1 pulled the modalities together and cost Recall@1)
    sampled_negatives: int = 512  # catalogue items drawn per batch, besides the in-batch ones
    batch_size: int = 128  # sequences per step
    epochs: int = 12  # passes over the training sequences, capped by `minutes`
    learning_rate: float = 3e-3  # AdamW
    minutes: float = 3.0  # wall-clock cap per trained variant
    variants: str = "multimodal,text,image,id,popularity"  # scored in eval_metrics; multimodal serves
    bootstrap: int = 1000  # resamples for the 95% intervals
    seed: int = 0  # initialisation, negatives and the bootstrap


@dataclass(frozen=True)
class VariantConfig:
    """One arm of an experiment: what its users' similar-items module shows, and to how many users."""
    # What the arm serves: production (the served system, as item_neighbors), candidate (the newest
    # model not promoted, else production), image_baseline, or a model version of the registry
    serve: str = PRODUCTION
    share: float = 0.5  # of the experiment's users (the shares of an experiment sum to 1)


@dataclass(frozen=True)
class ExperimentConfig:
    """An A/B test of the similar-items module (docs/experiments.md): while it runs, the nightly run
    publishes each arm's neighbours in item_neighbors_variants and, from the logged interactions,
    its results in ab_results."""
    variants: dict[str, VariantConfig] = field(default_factory=dict)  # two or more arms, by name
    control: str = ""  # the arm lifts are measured against; empty: the first one
    start: str = ""  # first ds it runs (YYYY-MM-DD); empty: from the first night it is configured
    end: str = ""  # last ds it runs (YYYY-MM-DD); empty: until it is removed from the config
    salt: str = ""  # of the assignment hash; empty: the experiment's name (a new salt reshuffles users)


@dataclass(frozen=True)
class AbConfig:
    """How experiments are read (pipelines/experiments/analysis.py; `lookalike ab-report`)."""
    conversion_window_hours: float = key(24.0, within="(0, inf)")  # a purchase of a module-clicked item this long after the click converts it
    srm_alpha: float = key(0.001, within="(0, 1)")  # a sample-ratio χ² p-value below this flags a broken split
    min_power: float = key(0.8, within="(0, 1)")  # below this power for a lift as observed the report warns the test is underpowered


@dataclass(frozen=True)
class AlertsConfig:
    """Who hears about a failed night (pipelines/orchestration/alerts.py)."""
    notifier: str = key("none", choices=("none", "smtp", "slack"))  # none | smtp | slack: every failed task notifies (the log line stays)
    to: str = ""  # smtp: recipient address(es), comma-separated
    from_email: str = "lookalike@localhost"  # smtp: the sender
    smtp_conn_id: str = "smtp_default"  # smtp: the Airflow SMTP connection
    slack_conn_id: str = "slack_default"  # slack: a Slack incoming-webhook connection
    publish_deadline_minutes: float = 0  # > 0: notify when a nightly run has not published this long after it was queued


@dataclass(frozen=True)
class PublishConfig:
    """The quality checks and the atomic commit of a ds (pipelines/publish/)."""
    retain_partitions: int = 14  # per table; older partitions are removed after a commit
    # The gate against the previous published day (pipelines/publish/drift.py): a ds beyond a bound is refused.
    max_rows_change: float = 0.5  # relative change of catalog, item_embeddings or item_neighbors rows
    max_coverage_drop: float = 0.05  # absolute drop of the share of on-sale items with neighbours
    max_score_shift: float = 0.15  # largest move of the 10th/50th/90th percentile neighbour score
    min_neighbor_overlap: float = 0.25  # mean share of neighbours kept by items whose photo did not change
    accept_drift: bool = False  # publish a ds beyond the bounds anyway (said in the run record)
    # Inside a DAG run, a refused ds waits for an operator's approval (the nightly DAG's approve_drift task)
    # this many minutes; no answer rejects it
    approval_timeout: float = key(720.0, within="(0, inf)")
    ask_approval: bool = True  # false: a refused ds fails publish at once (`lookalike run`: no one to ask)


@dataclass(frozen=True)
class PostgresSinkConfig:
    """The PostgreSQL online store (docs/serving.md): one table per generation, views switched in one transaction."""
    # libpq URL postgresql://user:password@host:port/db; inside a DAG run the Airflow Connection
    # `conn_id` replaces it when defined
    url: str = ""
    conn_id: str = "lookalike_online"  # the Airflow Connection of the store (empty: never look one up)
    schema: str = "lookalike"  # the schema holding the generations, their views and the pointer table
    connect_timeout: int = 10  # seconds before an unreachable server fails the hand-off (transient: retried)


@dataclass(frozen=True)
class RedisSinkConfig:
    """The Redis online store (docs/serving.md): one hash per table and generation, a pointer key switched in MULTI/EXEC."""
    url: str = ""  # redis://[:password@]host:port/db; inside a DAG run the Airflow Connection `conn_id` replaces it
    conn_id: str = "lookalike_redis"  # the Airflow Connection of the store (empty: never look one up)
    prefix: str = "lookalike"  # of every key Lookalike writes
    batch: int = key(5000, within="[1, inf)")  # lists per pipelined HSET
    # seconds a writer's lease outlives its writer (renewed every third of it while the writer works): how
    # long the next writer waits after one was killed
    lease_ttl: int = key(30, within="[3, inf)")
    connect_timeout: int = 10  # seconds before an unreachable server fails the hand-off (transient: retried)


@dataclass(frozen=True)
class ServingConfig:
    """The hand-off of every published night to the online stores the site reads (pipelines/online/)."""
    sinks: str = ""  # comma-separated: postgres, redis; empty = no hand-off
    # The published tables handed off: item_neighbors, item_neighbors_variants (each running
    # experiment's arms), user_recommendations
    tables: str = "item_neighbors,item_neighbors_variants,user_recommendations"
    keep_generations: int = key(2, within="[2, inf)")  # generations kept per feed in each store, the live one included (rollback needs 2)
    check_sample: int = key(500, within="[0, inf)")  # lists per table read back and compared with the Parquet rows before the switch
    # seconds a writer (hand-off, hour, rollback) waits for another writer's lease on the same feed and
    # store before it fails as transient, naming the holder
    lock_timeout: int = key(120, within="[0, inf)")
    postgres: PostgresSinkConfig = field(default_factory=PostgresSinkConfig)
    redis: RedisSinkConfig = field(default_factory=RedisSinkConfig)

    @property
    def sink_names(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.sinks.split(",") if name.strip())

    @property
    def table_names(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.tables.split(",") if name.strip())


@dataclass(frozen=True)
class IntradayConfig:
    """The hours between nights (lookalike_intraday, pipelines/intraday/): the changes since the night applied."""
    # When lookalike_intraday runs: a cron expression in UTC (read when the DAG file is parsed);
    # empty: only when triggered (`lookalike intraday`, or a manual run with as_of)
    schedule: str = "0 * * * *"
    # minutes before the watermark an hour reads again, for rows committed after the last hour read
    # with an earlier updated_at (long transactions, replica lag); re-reading changes nothing
    lookback: int = key(10, within="[0, inf)")


@dataclass(frozen=True)
class SparkConfig:
    """Where Spark jobs run (embed, and extract and neighbours above their thresholds)."""
    master: str = "local[*]"  # local[*], spark://host:7077, yarn, k8s://…
    driver_memory: str = "1g"  # the driver coordinates; in local mode it also hosts the tasks' JVM side
    # The serial collector keeps the driver's heap near what it uses; G1 grows it toward the cap
    # with the length of the run (benchmarks/embed_throughput.py: +42% driver RSS from 20k to 100k items
    # with G1 and a 2g heap, +8% with these defaults).
    driver_java_options: str = "-XX:+UseSerialGC"
    executor_memory: str = ""  # empty: Spark's default
    executor_gpus: int = 0  # GPUs per executor; > 0 schedules one GPU per embedding task, bf16 inference
    gpu_discovery_script: str = key("", path=True)  # when empty, the one Lookalike ships (pipelines/resources/gpu-discovery.sh); must exist on every executor host


@dataclass(frozen=True)
class AirflowConfig:
    """Running under Airflow: `lookalike run`, and the Connections a DAG run reads."""
    home: str = key("var/airflow", path=True)  # AIRFLOW_HOME for `lookalike run` on the embedded default
    # Inside a DAG run: the listings database from this Airflow connection (its SQLAlchemy URL
    # replaces source.url) and the object store's credentials from this AWS connection, when
    # defined; empty = never look one up (pipelines/orchestration/connections.py).
    source_conn_id: str = "lookalike_source"
    aws_conn_id: str = "aws_default"  # the AWS connection the object store's endpoint and credentials come from


@dataclass(frozen=True)
class Config:
    source: SourceConfig = field(default_factory=SourceConfig)
    # Published tables: a directory or s3://bucket/prefix (endpoint and credentials: the aws_default
    # connection in a DAG run, else the usual AWS_* variables)
    warehouse: str = key("var/warehouse", path=True)
    work_dir: str = key("", path=True)  # the runs' work area (local or a shared volume); empty: <warehouse>/_work, or var/work for s3://
    models: str = key("var/models", path=True)  # the model registry
    window_days: int = 90  # training snapshot window [ds - window_days, ds)
    model: ModelConfig = field(default_factory=ModelConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    neighbors: NeighborsConfig = field(default_factory=NeighborsConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    userrec: UserRecConfig = field(default_factory=UserRecConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    airflow: AirflowConfig = field(default_factory=AirflowConfig)
    # Running experiments by name, each an `experiments.<name>` section (below); none by default
    experiments: dict[str, ExperimentConfig] = field(default_factory=dict)
    ab: AbConfig = field(default_factory=AbConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    intraday: IntradayConfig = field(default_factory=IntradayConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def to_public_dict(self) -> dict:
        """:meth:`to_dict` without credentials: what is written beside outputs (run records,
        model folders, the registry) and shown to people."""
        data = self.to_dict()
        data["source"]["url"] = redact_url(data["source"]["url"])
        for sink in SINKS:
            data["serving"][sink]["url"] = redact_url(data["serving"][sink]["url"])
        return data


# scheme://user:password@host → scheme://user:***@host (SQLAlchemy URLs, s3://, http:// …)
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^/@\s:]*:)(?P<password>[^@\s]*)@")


def redact_url(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}***@", text)


def _coerce(value, typ, key: str):
    if typ is str and isinstance(value, (date, datetime)):  # YAML reads 2026-12-01 as a date
        return value.isoformat()
    if typ is bool and isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if typ in (int, float) and isinstance(value, str):
        try:
            return typ(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {typ.__name__}, got {value!r}")
    return value


# Keys an earlier release read, and what replaced them: named in the error a config that still has them gets
RENAMED = {"evaluate.max_colour_loss": "evaluate.max_facet_loss (the bound now holds for every facet, colour included)"}


def _build(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"section '{prefix.rstrip('.')}'" if prefix else "the top level"
        renamed = [f"{prefix + u} is now {RENAMED[prefix + u]}" for u in unknown if prefix + u in RENAMED]
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + u for u in unknown)} in {where}; "
                          + ("; ".join(renamed) + "; " if renamed else "") + f"valid keys: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        typ = hints[name]
        if typing.get_origin(typ) is dict:  # named sections: experiments.<name>, its variants.<name>
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{name}: expected a mapping of named sections, got {value!r}")
            section = typing.get_args(typ)[1]
            kwargs[name] = {}
            for key, item in value.items():
                if not isinstance(item, dict):
                    raise ConfigError(f"{prefix}{name}.{key}: expected a section (mapping), got {item!r}")
                kwargs[name][str(key)] = _build(section, item, prefix=f"{prefix}{name}.{key}.")
        elif dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{name}: expected a section (mapping), got {value!r}")
            kwargs[name] = _build(typ, value, prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, typ, prefix + name)
    return cls(**kwargs)


def _env_overrides(environ: typing.Mapping[str, str]) -> dict:
    """``LOOKALIKE_SECTION__KEY=value`` → ``{"section": {"key": value}}`` (YAML-typed values)."""
    out: dict = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in NOT_CONFIG_ENV:
            continue
        parts = name[len(ENV_PREFIX):].lower().split("__")
        value = yaml.safe_load(raw) if raw != "" else ""
        if isinstance(value, (dict, list)) or value is None:
            value = raw
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment variable {name} nests under a scalar key")
        node[parts[-1]] = value
    return out


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _resolve_paths(data: dict, base_dir: Path) -> dict:
    data = json.loads(json.dumps(data))  # deep copy
    for key in _PATH_KEYS:
        node = data
        for part in key[:-1]:
            node = node[part]
        value = node[key[-1]]
        if value and "://" not in value and not Path(value).is_absolute():
            node[key[-1]] = str((base_dir / value).resolve())
    if not data["work_dir"]:
        data["work_dir"] = str(default_root(data["warehouse"], base_dir))
    url = data["source"]["url"]
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        data["source"]["url"] = "sqlite:///" + str((base_dir / url[len("sqlite:///"):]).resolve())
    return data


def _declared(cls=None, prefix: str = ""):
    """(dotted key, its field) of every key of ``Config``, named sections excluded."""
    cls = cls or Config
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _declared(hints[f.name], f"{prefix}{f.name}.")
        elif typing.get_origin(hints[f.name]) is not dict:
            yield prefix + f.name, f


# What ``key()`` declared, by dotted key: the stages take their lists from here (``neighbors.index``).
CHOICES: dict[str, tuple[str, ...]] = {name: f.metadata["choices"] for name, f in _declared()
                                       if f.metadata.get("choices")}
INTERVALS: dict[str, tuple[float, float, bool, bool]] = {name: f.metadata["within"] for name, f in _declared()
                                                         if f.metadata.get("within")}
_PATH_KEYS = [tuple(name.split(".")) for name, f in _declared() if f.metadata.get("path")]


def _value(config: Config, key: str):
    node = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _check_values(config: Config) -> None:
    for key, allowed in CHOICES.items():
        value = _value(config, key)
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
    for key, (low, high, low_in, high_in) in INTERVALS.items():
        value = _value(config, key)
        if not ((low <= value if low_in else low < value) and (value <= high if high_in else value < high)):
            raise ConfigError(f"{key} must lie in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}; "
                             f"got {value!r}")


SINKS = ("postgres", "redis")  # serving.sinks
_SINK_SCHEMES = {"postgres": ("postgresql", "postgres"), "redis": ("redis", "rediss", "unix")}


def _check_serving(config: Config) -> None:
    serving = config.serving
    for key, names, allowed in (("serving.sinks", serving.sink_names, SINKS),
                                ("serving.tables", serving.table_names, tables.HANDED_OFF)):
        unknown = [name for name in names if name not in allowed]
        if unknown:
            raise ConfigError(f"{key}: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(allowed)}")
    for sink in serving.sink_names:
        url = getattr(serving, sink).url
        scheme = url.partition("://")[0].split("+")[0]
        if url and ("://" not in url or scheme not in _SINK_SCHEMES[sink]):
            raise ConfigError(f"serving.{sink}.url: the {sink} sink needs a {' or '.join(_SINK_SCHEMES[sink])}:// "
                              f"URL, got {redact_url(url)!r}")
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", serving.postgres.schema):
        raise ConfigError(f"serving.postgres.schema: a lowercase SQL identifier, got {serving.postgres.schema!r}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", serving.redis.prefix):
        raise ConfigError(f"serving.redis.prefix: letters, digits, '_', '.' and '-' only, got {serving.redis.prefix!r}")




def _check_experiments(config: Config) -> None:
    for name, exp in config.experiments.items():
        where = f"experiments.{name}"
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ConfigError(f"{where}: an experiment's name may hold letters, digits, '_', '.' and '-' only")
        if len(exp.variants) < 2:
            raise ConfigError(f"{where}.variants: an experiment needs two or more variants, got {len(exp.variants)}")
        for variant, arm in exp.variants.items():
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", variant):
                raise ConfigError(f"{where}.variants.{variant}: a variant's name may hold letters, digits, '_', '.' "
                                  "and '-' only")
            if not arm.serve:
                raise ConfigError(f"{where}.variants.{variant}.serve: name what the arm serves: "
                                  f"{', '.join(SERVE_NAMES)} or a model version")
            if not 0 < arm.share < 1:
                raise ConfigError(f"{where}.variants.{variant}.share must lie in (0, 1); got {arm.share!r}")
        total = sum(arm.share for arm in exp.variants.values())
        if abs(total - 1) > 1e-6:
            raise ConfigError(f"{where}: the variants' shares sum to {total:g}, not 1")
        if exp.control and exp.control not in exp.variants:
            raise ConfigError(f"{where}.control: {exp.control!r} is not one of its variants "
                              f"({', '.join(exp.variants)})")
        for key in ("start", "end"):
            value = getattr(exp, key)
            try:
                value and date.fromisoformat(value)
            except ValueError:
                raise ConfigError(f"{where}.{key}: expected a date YYYY-MM-DD, got {value!r}") from None
        if exp.start and exp.end and exp.end < exp.start:
            raise ConfigError(f"{where}: ends ({exp.end}) before it starts ({exp.start})")


def load_config(path: str | os.PathLike | None = None, environ: typing.Mapping[str, str] | None = None) -> Config:
    """The resolved configuration: defaults, then the YAML file, then environment overrides."""
    environ = os.environ if environ is None else environ
    if path is None:
        path = environ.get(CONFIG_ENV) or None
    data = Config().to_dict()
    base_dir = Path.cwd()
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file {file} does not exist")
        try:
            loaded = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {file} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {file} must hold a mapping of sections, got {type(loaded).__name__}")
        _build(Config, loaded)  # reject unknown keys with the file's own key names
        data = _merge(data, loaded)
        base_dir = file.resolve().parent
    data = _merge(data, _env_overrides(environ))
    config = _build(Config, data)
    _check_values(config)
    _check_experiments(config)
    _check_serving(config)
    return _build(Config, _resolve_paths(config.to_dict(), base_dir))
