-- item_neighbors_live: each item's list as the site serves it between nights. The newest night's
-- item_neighbors, with the lists the intraday hours changed since that night (item_neighbors_intraday,
-- that night's partition: each changed list whole) in their place; an item whose list an hour withdrew
-- (rank 0: sold, deleted, or short of neighbours) has none. as_of: the time the list holds every change
-- before (the night's cutoff, ds 00:00 UTC, or the hour's). pipelines/query.py creates it after the
-- tables' views; docs/pipeline.md gives the same view for Spark SQL and Trino.
create view item_neighbors_live as
with night as (select max(ds) as ds from item_neighbors_all),
hours as (select h.* from item_neighbors_intraday_all h, night where h.ds = night.ds)
select n.ds, n.ds || 'T00:00:00' as as_of, n.item_id, n.rank, n.neighbor_id, n.score, n.same_image, n.model_version
from item_neighbors_all n, night
where n.ds = night.ds and n.item_id not in (select item_id from hours)
union all
select ds, as_of, item_id, rank, neighbor_id, score, same_image, model_version
from hours
where rank > 0;
