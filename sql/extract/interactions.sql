-- Interaction events in the window [window_start, window_end): the held-out logs of the offline evaluation
-- (impressions and clicks of the similar-items module carry source_item_id) and of the A/B tests.
-- $experiment and $variant are the optional columns: extract puts the column's name where the source's
-- interactions table has it, else null (docs/pipeline.md, 'Source contract').
select
    user_id,
    session_id,
    event,
    item_id,
    source_item_id,
    ts,
    $experiment as experiment,
    $variant as variant
from interactions
where ts >= :window_start
  and ts < :window_end
