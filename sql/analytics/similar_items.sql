-- Question: which items does Lookalike show as "similar" for one item, and what are they?
-- Set the item with `--var item_id=i000123` (default: the first item with neighbours).
-- Columns: rank (1 = most similar), neighbor_id, score (cosine similarity, -1..1),
--          title / category / price of the neighbour, and the query item's own title for context.
with

neighbors as (
    select * from item_neighbors
),

listings as (
    select item_id, title, category, price from catalog
),

query_item as (
    select coalesce(getvariable('item_id'), (select min(item_id) from neighbors)) as item_id
),

final as (
    select
        n.item_id,
        q_l.title as item_title,
        n.rank,
        n.neighbor_id,
        round(n.score, 4) as score,
        l.title as neighbor_title,
        l.category as neighbor_category,
        l.price as neighbor_price
    from neighbors as n
    join query_item as q on n.item_id = q.item_id
    left join listings as l on l.item_id = n.neighbor_id
    left join listings as q_l on q_l.item_id = n.item_id
)

select * from final
order by rank
