-- Question: what did one user do recently, and what does Lookalike recommend to them next?
-- Set the user with `--var user_id=u00042` (default: the first user with recommendations).
-- Columns: side ('history' = the steps the user model read, newest first; 'recommended' = its
--          top-k, best first), position (step or rank), item_id, event (history) or score
--          (recommendations), and the item's title, category and price.
with

recommendations as (
    select * from user_recommendations
),

history as (
    select * from user_history
),

items as (
    select item_id, title, category, price from listings_snapshot
    union all by name
    select item_id, title, category, price from catalog
),

item_titles as (
    select item_id, any_value(title) as title, any_value(category) as category, any_value(price) as price
    from items
    group by item_id
),

chosen_user as (
    select coalesce(getvariable('user_id'), (select min(user_id) from recommendations)) as user_id
),

both_sides as (
    select 'history' as side, h.step as position, h.item_id, h.event, null::float as score
    from history as h
    join chosen_user as u on h.user_id = u.user_id
    union all
    select 'recommended' as side, r.rank as position, r.item_id, null as event, round(r.score, 4) as score
    from recommendations as r
    join chosen_user as u on r.user_id = u.user_id
),

final as (
    select
        s.side,
        s.position,
        s.item_id,
        s.event,
        s.score,
        t.title,
        t.category,
        t.price
    from both_sides as s
    left join item_titles as t on t.item_id = s.item_id
)

select * from final
order by side, position
