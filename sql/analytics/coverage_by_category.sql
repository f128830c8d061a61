-- Question: for each category, how much of the active catalogue got a neighbour list, and how close
-- are the neighbours?
-- Columns: category, items (on sale), items_with_neighbors, coverage (share 0..1),
--          mean_score (mean cosine similarity over all ranks), mean_top1_score (rank 1 only).
with

listings as (
    select item_id, coalesce(category, '(none)') as category from catalog
),

neighbors as (
    select * from item_neighbors
),

per_item as (
    select
        item_id,
        avg(score) as mean_score,
        max(case when rank = 1 then score end) as top1_score
    from neighbors
    group by item_id
),

final as (
    select
        l.category,
        count(*) as items,
        count(p.item_id) as items_with_neighbors,
        round(count(p.item_id) / count(*), 4) as coverage,
        round(avg(p.mean_score), 4) as mean_score,
        round(avg(p.top1_score), 4) as mean_top1_score
    from listings as l
    left join per_item as p on p.item_id = l.item_id
    group by l.category
)

select * from final
order by items desc
