-- The listings changed in [changed_since, changed_before): what an intraday hour applies on top of
-- the night (new listings, a changed photo, title or price, a status changed to sold or deleted).
-- updated_at is the watermark: keep it indexed and set on every change. $colour and
-- $product_group: the optional columns, as in listings_window.sql.
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
where updated_at >= :changed_since
  and updated_at < :changed_before
