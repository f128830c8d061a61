-- Lookalike's published tables as external Parquet tables for Spark SQL, partitioned by ds.
-- `lookalike ddl --engine spark` fills in ${schema} and ${warehouse} (s3:// becomes s3a://) and
-- appends one statement pair per published partition: a published ds lives in an immutable
-- run folder (<table>/ds=<ds>/run=<run_id>/) named by the warehouse manifest, so partitions are
-- registered at their run's location, never discovered from folders (MSCK REPAIR would see
-- unfinished runs). Rerun the generated script after every publish; it is idempotent.
-- Column meanings: docs/pipeline.md "Tables". item_embeddings stored with embed.float16 (Parquet FLOAT16)
-- needs a reader that knows half floats; the default float32 storage reads everywhere.
create schema if not exists ${schema};

create table if not exists ${schema}.listings_snapshot (
    item_id string,
    title string,
    description string,
    category string,
    brand string,
    price double,
    status string,
    seller_id string,
    image_key string,
    created_at string,
    updated_at string,
    colour string,
    product_group string,
    image_width int,
    image_height int,
    image_sha256 string,
    ds string
)
using parquet
partitioned by (ds)
location '${warehouse}/listings_snapshot';

create table if not exists ${schema}.catalog (
    item_id string,
    title string,
    description string,
    category string,
    brand string,
    price double,
    status string,
    seller_id string,
    image_key string,
    created_at string,
    updated_at string,
    colour string,
    product_group string,
    image_width int,
    image_height int,
    image_sha256 string,
    ds string
)
using parquet
partitioned by (ds)
location '${warehouse}/catalog';

create table if not exists ${schema}.quarantine (
    item_id string,
    stage string,
    reason string,
    image_key string,
    ds string
)
using parquet
partitioned by (ds)
location '${warehouse}/quarantine';

create table if not exists ${schema}.item_embeddings (
    item_id string,
    model_version string,
    image_sha256 string,
    embedding array<float>,
    text_sha256 string,
    ds string
)
using parquet
partitioned by (ds)
location '${warehouse}/item_embeddings';

create table if not exists ${schema}.item_neighbors (
    item_id string,
    rank int,
    neighbor_id string,
    score float,
    same_image boolean,
    model_version string,
    ds string
)
using parquet
partitioned by (ds)
location '${warehouse}/item_neighbors';

create table if not exists ${schema}.item_neighbors_intraday (
    as_of string,
    item_id string,
    rank int,
    neighbor_id string,
    score float,
    same_image boolean,
    model_version string,
    ds string
)
using parquet
partitioned by (ds)
location '${warehouse}/item_neighbors_intraday';

create table if not exists ${schema}.item_neighbors_variants (
    item_id string,
    rank int,
    neighbor_id string,
    score float,
    same_image boolean,
    model_version string,
    experiment string,
    variant string,
    ds string
)
using parquet
partitioned by (ds)
location '${warehouse}/item_neighbors_variants';

create table if not exists ${schema}.experiment_variants (
    experiment string,
    variant string,
    is_control boolean,
    serve string,
    model_version string,
    share double,
    salt string,
    bucket_low int,
    bucket_high int,
    start_ds string,
    end_ds string,
    ds string
)
using parquet
partitioned by (ds)
location '${warehouse}/experiment_variants';

create table if not exists ${schema}.ab_results (
    experiment string,
    variant string,
    is_control boolean,
    metric string,
    users bigint,
    impressions bigint,
    value double,
    lift double,
    lift_low double,
    lift_high double,
    p_value double,
    power double,
    srm_p_value double,
    first_day string,
    last_day string,
    warning string,
    ds string
)
using parquet
partitioned by (ds)
location '${warehouse}/ab_results';

create table if not exists ${schema}.eval_metrics (
    system string,
    model_version string,
    metric string,
    k int,
    value double,
    ci_low double,
    ci_high double,
    n bigint,
    segment string,
    ds string
)
using parquet
partitioned by (ds)
location '${warehouse}/eval_metrics';

create table if not exists ${schema}.user_recommendations (
    user_id string,
    rank int,
    item_id string,
    score float,
    model_version string,
    ds string
)
using parquet
partitioned by (ds)
location '${warehouse}/user_recommendations';

create table if not exists ${schema}.user_history (
    user_id string,
    step int,
    item_id string,
    event string,
    ds string
)
using parquet
partitioned by (ds)
location '${warehouse}/user_history';
