-- Listings created in the training window [window_start, window_end): the image–title pairs
-- SigLIP is fine-tuned on. Adapt the FROM clause to your warehouse; keep the output columns.
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
where created_at >= :window_start
  and created_at < :window_end
