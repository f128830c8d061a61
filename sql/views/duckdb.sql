-- The latest-partition view of one published table. pipelines/query.py runs this once for each
-- table of the registry (pipelines/tables.py), with ${table} filled in, after it has created
-- ${table}_all (every published partition, from the table's manifest): analysts usually want the
-- newest ds.
create view ${table} as
select * from ${table}_all where ds = (select max(ds) from ${table}_all);
