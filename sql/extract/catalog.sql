-- The active catalogue at window_end: every item on sale, however old. These are embedded
-- nightly and are the only items allowed as neighbours. $colour and $product_group: the optional
-- columns, as in listings_window.sql.
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
    updated_at,
    $colour as colour,
    $product_group as product_group
from listings
where status = 'on_sale'
  and created_at < :window_end
