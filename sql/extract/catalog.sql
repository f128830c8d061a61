-- The active catalogue at window_end: every item on sale, however old. These are embedded
-- nightly and are the only items allowed as neighbours.
select
    item_id,
    title,
    description,
    category,
    brand,
    price,
    status,
    seller_id,
    image_key,
    created_at,
    updated_at
from listings
where status = 'on_sale'
  and created_at < :window_end
