"""The interaction log a night extracted, as the stages that learn from it read it."""
from __future__ import annotations

from datetime import date, timedelta

import pyarrow as pa
import pyarrow.parquet as pq


def read_events(wh, ds: str, days: int) -> pa.Table:
    """The ds's extracted interaction log restricted to [ds - days, ds): each reader its own window."""
    import pyarrow.compute as pc

    events = pq.read_table(wh.work(ds, "interactions"), partitioning=None)
    start = (date.fromisoformat(ds) - timedelta(days=days)).isoformat()
    return events.filter(pc.greater_equal(pc.utf8_slice_codeunits(events.column("ts"), 0, 10), start))
