-- Lookalike's published tables as external Parquet tables for Trino's Hive connector,
-- partitioned by ds. `lookalike ddl --engine trino --catalog hive` fills in ${catalog},
-- ${schema} and ${warehouse} and appends a register_partition call per published partition: a
-- published ds lives in an immutable run folder (<table>/ds=<ds>/run=<run_id>/) named by the
-- warehouse manifest, so each partition is registered at its run's location (the connector
-- needs hive.allow-register-partition-procedure=true). When a ds is published again, its old
-- registration must be removed first: the script unregisters every ds it registers, so run it
-- after each publish; the first run on a fresh schema reports "partition does not exist" for
-- those unregister calls, which is harmless.
-- Column meanings: docs/pipeline.md "Tables".
create schema if not exists ${catalog}.${schema};

create table if not exists ${catalog}.${schema}.listings_snapshot (
    item_id varchar,
    title varchar,
    description varchar,
    category varchar,
    brand varchar,
    price double,
    status varchar,
    seller_id varchar,
    image_key varchar,
    created_at varchar,
    updated_at varchar,
    colour varchar,
    product_group varchar,
    image_width integer,
    image_height integer,
    image_sha256 varchar,
    ds varchar
)
with (external_location = '${warehouse}/listings_snapshot', format = 'PARQUET', partitioned_by = array['ds']);

create table if not exists ${catalog}.${schema}.catalog (
    item_id varchar,
    title varchar,
    description varchar,
    category varchar,
    brand varchar,
    price double,
    status varchar,
    seller_id varchar,
    image_key varchar,
    created_at varchar,
    updated_at varchar,
    colour varchar,
    product_group varchar,
    image_width integer,
    image_height integer,
    image_sha256 varchar,
    ds varchar
)
with (external_location = '${warehouse}/catalog', format = 'PARQUET', partitioned_by = array['ds']);

create table if not exists ${catalog}.${schema}.quarantine (
    item_id varchar,
    stage varchar,
    reason varchar,
    image_key varchar,
    ds varchar
)
with (external_location = '${warehouse}/quarantine', format = 'PARQUET', partitioned_by = array['ds']);

create table if not exists ${catalog}.${schema}.item_embeddings (
    item_id varchar,
    model_version varchar,
    image_sha256 varchar,
    embedding array(real),
    text_sha256 varchar,
    ds varchar
)
with (external_location = '${warehouse}/item_embeddings', format = 'PARQUET', partitioned_by = array['ds']);

create table if not exists ${catalog}.${schema}.item_neighbors (
    item_id varchar,
    rank integer,
    neighbor_id varchar,
    score real,
    same_image boolean,
    model_version varchar,
    ds varchar
)
with (external_location = '${warehouse}/item_neighbors', format = 'PARQUET', partitioned_by = array['ds']);

create table if not exists ${catalog}.${schema}.item_neighbors_intraday (
    as_of varchar,
    item_id varchar,
    rank integer,
    neighbor_id varchar,
    score real,
    same_image boolean,
    model_version varchar,
    ds varchar
)
with (external_location = '${warehouse}/item_neighbors_intraday', format = 'PARQUET', partitioned_by = array['ds']);

create table if not exists ${catalog}.${schema}.item_neighbors_variants (
    item_id varchar,
    rank integer,
    neighbor_id varchar,
    score real,
    same_image boolean,
    model_version varchar,
    experiment varchar,
    variant varchar,
    ds varchar
)
with (external_location = '${warehouse}/item_neighbors_variants', format = 'PARQUET', partitioned_by = array['ds']);

create table if not exists ${catalog}.${schema}.experiment_variants (
    experiment varchar,
    variant varchar,
    is_control boolean,
    serve varchar,
    model_version varchar,
    share double,
    salt varchar,
    bucket_low integer,
    bucket_high integer,
    start_ds varchar,
    end_ds varchar,
    ds varchar
)
with (external_location = '${warehouse}/experiment_variants', format = 'PARQUET', partitioned_by = array['ds']);

create table if not exists ${catalog}.${schema}.ab_results (
    experiment varchar,
    variant varchar,
    is_control boolean,
    metric varchar,
    users bigint,
    impressions bigint,
    value double,
    lift double,
    lift_low double,
    lift_high double,
    p_value double,
    power double,
    srm_p_value double,
    first_day varchar,
    last_day varchar,
    warning varchar,
    ds varchar
)
with (external_location = '${warehouse}/ab_results', format = 'PARQUET', partitioned_by = array['ds']);

create table if not exists ${catalog}.${schema}.eval_metrics (
    system varchar,
    model_version varchar,
    metric varchar,
    k integer,
    value double,
    ci_low double,
    ci_high double,
    n bigint,
    segment varchar,
    ds varchar
)
with (external_location = '${warehouse}/eval_metrics', format = 'PARQUET', partitioned_by = array['ds']);

create table if not exists ${catalog}.${schema}.user_recommendations (
    user_id varchar,
    rank integer,
    item_id varchar,
    score real,
    model_version varchar,
    ds varchar
)
with (external_location = '${warehouse}/user_recommendations', format = 'PARQUET', partitioned_by = array['ds']);

create table if not exists ${catalog}.${schema}.user_history (
    user_id varchar,
    step integer,
    item_id varchar,
    event varchar,
    ds varchar
)
with (external_location = '${warehouse}/user_history', format = 'PARQUET', partitioned_by = array['ds']);
