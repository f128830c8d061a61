-- Question: which on-sale photos appear under more than one item id (reposts, copied listings),
-- and do the neighbour lists show them to each other?
-- Columns: image_sha256 (the photo's hash), items (on-sale items with it), sellers (distinct
--          sellers among them), item_ids (up to 5, sorted), titles (up to 3 distinct),
--          flagged_pairs (neighbour rows between these items, marked same_image = true).
with

listings as (
    select item_id, seller_id, title, image_sha256
    from catalog
    where status = 'on_sale' and image_sha256 is not null
),

neighbors as (
    select item_id, neighbor_id from item_neighbors where same_image
),

shared as (
    select
        image_sha256,
        count(*) as items,
        count(distinct seller_id) as sellers,
        list(item_id order by item_id)[1:5] as item_ids,
        list(distinct title)[1:3] as titles
    from listings
    group by image_sha256
    having count(*) > 1
),

flagged as (
    select l.image_sha256, count(*) as flagged_pairs
    from neighbors as n
    join listings as l on l.item_id = n.item_id
    group by l.image_sha256
),

final as (
    select
        s.image_sha256,
        s.items,
        s.sellers,
        s.item_ids,
        s.titles,
        coalesce(f.flagged_pairs, 0) as flagged_pairs
    from shared as s
    left join flagged as f using (image_sha256)
)

select * from final
order by items desc, image_sha256
