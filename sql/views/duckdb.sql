-- Latest-partition views over the published tables. `<table>_all` (every published partition)
-- is created by pipelines/query.py from each table's manifest; these views keep only the
-- newest ds, which is what analysts usually want.
create view listings_snapshot as
select * from listings_snapshot_all where ds = (select max(ds) from listings_snapshot_all);

create view catalog as
select * from catalog_all where ds = (select max(ds) from catalog_all);

create view quarantine as
select * from quarantine_all where ds = (select max(ds) from quarantine_all);

create view item_embeddings as
select * from item_embeddings_all where ds = (select max(ds) from item_embeddings_all);

create view item_neighbors as
select * from item_neighbors_all where ds = (select max(ds) from item_neighbors_all);

create view eval_metrics as
select * from eval_metrics_all where ds = (select max(ds) from eval_metrics_all);

create view user_recommendations as
select * from user_recommendations_all where ds = (select max(ds) from user_recommendations_all);

create view user_history as
select * from user_history_all where ds = (select max(ds) from user_history_all);
