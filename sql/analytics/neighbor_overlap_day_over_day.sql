-- Question: how stable are neighbour lists from one published day to the previous one?
-- Compares the latest ds with the ds before it, per item present on both days.
-- Columns: ds, previous_ds, items (present on both days), mean_overlap (share 0..1 of the
--          latest list also in the previous list), unchanged_lists (items whose lists match exactly).
-- With a single published day, returns no rows.
with

days as (
    select distinct ds from item_neighbors_all
),

latest as (
    select max(ds) as ds from days
),

previous as (
    select max(ds) as ds from days where ds < (select ds from latest)
),

today as (
    select item_id, neighbor_id from item_neighbors_all where ds = (select ds from latest)
),

yesterday as (
    select item_id, neighbor_id from item_neighbors_all where ds = (select ds from previous)
),

per_item as (
    select
        t.item_id,
        count(*) as list_size,
        count(y.neighbor_id) as kept
    from today as t
    left join yesterday as y on y.item_id = t.item_id and y.neighbor_id = t.neighbor_id
    where t.item_id in (select item_id from yesterday)
    group by t.item_id
),

final as (
    select
        (select ds from latest) as ds,
        (select ds from previous) as previous_ds,
        count(*) as items,
        round(avg(kept / list_size), 4) as mean_overlap,
        sum(case when kept = list_size then 1 else 0 end) as unchanged_lists
    from per_item
    having count(*) > 0
)

select * from final
