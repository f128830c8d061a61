-- Runs once, when the compose stack's PostgreSQL volume is created: the listings source database
-- (the `lookalike-seed` job fills it from `lookalike sample-data`; point source.url at your own)
-- and the site's online store (every published night is handed off to it: docs/serving.md).
create user lookalike with password 'lookalike';
create database listings owner lookalike;
create user lookalike_site with password 'lookalike-site';
create database online owner lookalike_site;
