-- The assignment of users to experiment arms, as DuckDB macros over the published experiment_variants
-- (pipelines/query.py runs this after the views). The same integer as the serving side's hash in
-- any engine (docs/experiments.md): the first 8 hex digits of md5(salt || ':' || user_id), mod 10000.
--   select lookalike_bucket('similar-looks', 'u00042');          -- 0 … 9999
--   select lookalike_variant('similar-looks', 'u00042');         -- the arm on the latest ds
create macro lookalike_bucket(salt, user_id) as
    (('0x' || substr(md5(salt || ':' || user_id), 1, 8))::UBIGINT % 10000)::INTEGER;

create macro lookalike_variant(experiment_name, user_id) as (
    select v.variant from experiment_variants v
    where v.experiment = experiment_name
      and lookalike_bucket(v.salt, user_id) >= v.bucket_low
      and lookalike_bucket(v.salt, user_id) < v.bucket_high
);
