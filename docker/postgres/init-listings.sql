-- Runs once, when the compose stack's PostgreSQL volume is created: the listings source database
-- (the `lookalike-seed` job fills it from `lookalike sample-data`; point source.url at your own).
create user lookalike with password 'lookalike';
create database listings owner lookalike;
