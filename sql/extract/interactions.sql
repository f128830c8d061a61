-- Interaction events in the window [window_start, window_end): the held-out logs of the offline evaluation
-- (impressions and clicks of the similar-items module carry source_item_id).
select
    user_id,
    session_id,
    event,
    item_id,
    source_item_id,
    ts
from interactions
where ts >= :window_start
  and ts < :window_end
