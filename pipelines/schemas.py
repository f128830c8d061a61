"""Arrow schemas of every table Lookalike writes: the output contract in one place."""
from __future__ import annotations

import pyarrow as pa

from lookalike.tables import TABLES

LISTING_FIELDS = [
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("title", pa.string()),
    pa.field("description", pa.string()),
    pa.field("category", pa.string()),
    pa.field("brand", pa.string()),
    pa.field("price", pa.float64()),
    pa.field("status", pa.string()),
    pa.field("seller_id", pa.string()),
    pa.field("image_key", pa.string()),
    pa.field("created_at", pa.string()),
    pa.field("updated_at", pa.string()),
    pa.field("colour", pa.string()),  # optional in the source: NULL where it has no such column
    pa.field("product_group", pa.string()),  # optional: the product a listing's variants share
]
LISTINGS_OPTIONAL = ("colour", "product_group")  # a source without them reads as NULL

# Work-area snapshot and catalogue: listings plus the normalised image (JPEG bytes).
ITEMS = pa.schema(
    [pa.field("ds", pa.string(), nullable=False), *LISTING_FIELDS,
     pa.field("image", pa.binary()), pa.field("image_width", pa.int32()), pa.field("image_height", pa.int32()),
     pa.field("image_sha256", pa.string()),
     pa.field("image_source", pa.string())]  # how the photo was normalised and from which object (extract.photos)
)

# Published snapshot: what analysts query (the image bytes stay in the work area).
LISTINGS_SNAPSHOT = pa.schema([f for f in ITEMS if f.name not in ("image", "image_source")])

QUARANTINE = pa.schema([
    pa.field("ds", pa.string(), nullable=False),
    pa.field("item_id", pa.string()),
    pa.field("stage", pa.string()),
    pa.field("reason", pa.string()),
    pa.field("image_key", pa.string()),
])

INTERACTIONS = pa.schema([
    pa.field("user_id", pa.string()),
    pa.field("session_id", pa.string()),
    pa.field("event", pa.string()),
    pa.field("item_id", pa.string()),
    pa.field("source_item_id", pa.string()),
    pa.field("ts", pa.string()),
    pa.field("experiment", pa.string()),  # optional in the source: NULL outside experiments
    pa.field("variant", pa.string()),
])
INTERACTIONS_OPTIONAL = ("experiment", "variant")  # a source without them reads as NULL

ITEM_EMBEDDINGS = pa.schema([
    pa.field("ds", pa.string(), nullable=False),
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("model_version", pa.string()),
    pa.field("image_sha256", pa.string()),
    pa.field("embedding", pa.list_(pa.float32())),
    pa.field("text_sha256", pa.string()),  # the text the vector read (a system that reads titles), else null
])

ITEM_NEIGHBORS = pa.schema([
    pa.field("ds", pa.string(), nullable=False),
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("rank", pa.int32(), nullable=False),
    pa.field("neighbor_id", pa.string(), nullable=False),
    pa.field("score", pa.float32(), nullable=False),
    pa.field("same_image", pa.bool_()),  # the neighbour's photo is byte-identical (same image_sha256)
    pa.field("model_version", pa.string()),
])

# The lists the intraday hours changed since the night ``ds`` they build on, as of ``as_of`` (the newest
# hour's time): each changed item's whole list; an item whose list was withdrawn (sold, deleted, quarantined, or
# fewer than k neighbours left) has one row with rank 0 and no neighbour. Every hour rewrites the partition.
ITEM_NEIGHBORS_INTRADAY = pa.schema([
    pa.field("ds", pa.string(), nullable=False),
    pa.field("as_of", pa.string(), nullable=False),  # the hour applied every change before this time (UTC)
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("rank", pa.int32(), nullable=False),  # 1..k; 0: the item has no list now
    pa.field("neighbor_id", pa.string()),
    pa.field("score", pa.float32()),
    pa.field("same_image", pa.bool_()),
    pa.field("model_version", pa.string()),
])

# The neighbours each arm of a running experiment serves: item_neighbors' contract per (experiment, variant).
ITEM_NEIGHBORS_VARIANTS = pa.schema([*ITEM_NEIGHBORS, pa.field("experiment", pa.string(), nullable=False),
                                     pa.field("variant", pa.string(), nullable=False)])

# One row per arm of each running experiment: what it serves and which users see it. A user is in
# the arm whose [bucket_low, bucket_high) holds md5(salt || ':' || user_id)'s first 8 hex digits mod 10000
# (pipelines/assignment.py; the SQL functions of docs/experiments.md).
EXPERIMENT_VARIANTS = pa.schema([
    pa.field("ds", pa.string(), nullable=False),
    pa.field("experiment", pa.string(), nullable=False),
    pa.field("variant", pa.string(), nullable=False),
    pa.field("is_control", pa.bool_()),
    pa.field("serve", pa.string()),  # as configured: production, candidate, image_baseline or a version
    pa.field("model_version", pa.string()),  # what that resolved to on this ds
    pa.field("share", pa.float64()),
    pa.field("salt", pa.string()),
    pa.field("bucket_low", pa.int32()),
    pa.field("bucket_high", pa.int32()),
    pa.field("start_ds", pa.string()),  # empty: from its first night
    pa.field("end_ds", pa.string()),  # empty: open-ended
])

# The experiment's analysis from the logged interactions up to the ds, per variant and metric.
AB_RESULTS = pa.schema([
    pa.field("ds", pa.string(), nullable=False),
    pa.field("experiment", pa.string(), nullable=False),
    pa.field("variant", pa.string(), nullable=False),
    pa.field("is_control", pa.bool_()),
    pa.field("metric", pa.string(), nullable=False),  # ctr | conversion | revenue_per_user
    pa.field("users", pa.int64()),  # users with a module impression
    pa.field("impressions", pa.int64()),
    pa.field("value", pa.float64()),
    pa.field("lift", pa.float64()),  # relative to control; null on the control's rows
    pa.field("lift_low", pa.float64()),  # 95% interval (delta method, users as the unit)
    pa.field("lift_high", pa.float64()),
    pa.field("p_value", pa.float64()),
    pa.field("power", pa.float64()),  # to detect the observed lift at the 5% level
    pa.field("srm_p_value", pa.float64()),  # χ² of the users per variant against the configured shares
    pa.field("first_day", pa.string()),
    pa.field("last_day", pa.string()),
    pa.field("warning", pa.string()),  # sample-ratio mismatch, underpowered, …; null when none
])

ITEM_EMBEDDINGS_FLOAT16 = ITEM_EMBEDDINGS.set(
    ITEM_EMBEDDINGS.get_field_index("embedding"), pa.field("embedding", pa.list_(pa.float16())))

EVAL_METRICS = pa.schema([
    pa.field("ds", pa.string(), nullable=False),
    pa.field("system", pa.string(), nullable=False),
    pa.field("model_version", pa.string()),
    pa.field("metric", pa.string(), nullable=False),
    pa.field("k", pa.int32()),
    pa.field("value", pa.float64()),
    pa.field("ci_low", pa.float64()),
    pa.field("ci_high", pa.float64()),
    pa.field("n", pa.int64()),
    pa.field("segment", pa.string()),  # null: every query; "category=<c>": the queries of one category
])


USER_RECOMMENDATIONS = pa.schema([
    pa.field("ds", pa.string(), nullable=False),
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("rank", pa.int32(), nullable=False),
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("score", pa.float32(), nullable=False),
    pa.field("model_version", pa.string()),
])

# The steps of each user's sequence the user model read for their recommendations (newest first).
USER_HISTORY = pa.schema([
    pa.field("ds", pa.string(), nullable=False),
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("step", pa.int32(), nullable=False),  # 1 = the newest
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("event", pa.string(), nullable=False),  # the strongest of view < click < purchase on that step
])

# Published table → the schema of its Parquet files (the table registry names each one).
PUBLISHED = {t.name: globals()[t.schema] for t in TABLES}
