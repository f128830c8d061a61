-- One row per item_id from the staged (normalised) listings: the latest updated_at wins, a row
-- without one loses to any that has one, and of equal times the one the source returned last wins.
-- Rows without an item_id all stay (each is rejected with its reason). Ordered by item_id (byte
-- order), which is what lets extract merge tonight's rows with an earlier night's photos in one pass.
select * exclude (_seq)
from staged
qualify item_id is null
     or row_number() over (partition by item_id order by updated_at desc nulls last, _seq desc) = 1
order by item_id nulls first, _seq
