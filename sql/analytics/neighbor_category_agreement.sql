-- Question: how often does a neighbour share the query item's category, by rank?
-- A sanity check of the embedding: agreement should be high at rank 1 and fall slowly.
-- Columns: rank, pairs (query–neighbour pairs with both categories known),
--          same_category (share 0..1 of those pairs in the same category).
with

neighbors as (
    select * from item_neighbors
),

categories as (
    select item_id, category from catalog where category is not null
),

pairs as (
    select
        n.rank,
        q.category as item_category,
        c.category as neighbor_category
    from neighbors as n
    join categories as q on q.item_id = n.item_id
    join categories as c on c.item_id = n.neighbor_id
),

final as (
    select
        rank,
        count(*) as pairs,
        round(avg(case when item_category = neighbor_category then 1.0 else 0.0 end), 4) as same_category
    from pairs
    group by rank
)

select * from final
order by rank
