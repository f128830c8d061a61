-- Question: why were listings left out of the latest run?
-- Columns: stage (extract or embed), reason, listings (count), example_item_id.
with

quarantined as (
    select * from quarantine
),

final as (
    select
        stage,
        regexp_replace(reason, '[0-9]+', 'N', 'g') as reason,
        count(*) as listings,
        min(item_id) as example_item_id
    from quarantined
    group by all
)

select * from final
order by listings desc
