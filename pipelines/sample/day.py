"""A day of the sample marketplace after its last night: listings arrive and sell through the day.

``move_day`` writes the day's changes into the sample's source with their timestamps: ``new`` of the
on-sale catalogue is listed anew (reposts of existing products, each photo written again with a few
unique bytes, so it is a new photo that looks the same; its hidden attributes copied, so the site's
shoppers see it as that product) and ``sold`` of it is sold, each at a moment drawn uniformly over the
day. Nothing is sold before it was listed. What a refresh policy shows the day's shoppers can then be
measured (``lookalike simulate-ab --freshness``).
"""
from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

DAY_PREFIX = "day-"  # the item ids of the listings a moved day added


def move_day(db: Path, images: Path, day: str, *, new: float = 0.02, sold: float = 0.02, seed: int = 0) -> dict:
    """Add the day's listings and sales to the sample at ``db`` (its photos under ``images``); returns
    {item_id: (listed_at, sold_at or None)} of every item the day touched, with counts. A day moved
    before is left as it is (its listings are there already)."""
    start = datetime.fromisoformat(f"{day}T00:00:00")
    rng = np.random.default_rng(seed)
    with sqlite3.connect(db) as con:
        if con.execute("select count(*) from listings where item_id like ?", (f"{DAY_PREFIX}{day}-%",)).fetchone()[0]:
            return _moved(con, day)
        rows = con.execute("select * from listings where status = 'on_sale' and image_key is not null "
                           "and created_at < ? order by item_id", (start.isoformat(),)).fetchall()
        rows = [r for r in rows if (images / r[8]).is_file()]
        n_new, n_sold = round(len(rows) * new), round(len(rows) * sold)
        picked = rng.choice(len(rows), n_new + n_sold, replace=False)
        moment = lambda: start + timedelta(seconds=float(rng.uniform(0, 86_400)))  # noqa: E731
        attributes_path = db.parent / "hidden_attributes.json"
        attributes = json.loads(attributes_path.read_text()) if attributes_path.exists() else {}
        fresh = []
        for i, row in enumerate(rows[j] for j in picked[:n_new]):
            item, at = f"{DAY_PREFIX}{day}-{i:05d}", moment().isoformat(timespec="seconds")
            key = f"day/{day}/{i:05d}.jpg"
            (images / key).parent.mkdir(parents=True, exist_ok=True)
            (images / key).write_bytes((images / row[8]).read_bytes() + f"{day} {i}".encode())
            fresh.append((item, *row[1:6], "on_sale", row[7], key, at, at))
            if row[0] in attributes:
                attributes[item] = attributes[row[0]]
        con.executemany("insert into listings (item_id, title, description, category, brand, price, status, "
                        "seller_id, image_key, created_at, updated_at) values (?,?,?,?,?,?,?,?,?,?,?)", fresh)
        con.executemany("update listings set status = 'sold', updated_at = ? where item_id = ?",
                        [(moment().isoformat(timespec="seconds"), rows[j][0]) for j in picked[n_new:]])
        if attributes:
            attributes_path.write_text(json.dumps(attributes))
        return _moved(con, day)


def _moved(con, day: str) -> dict:
    end = (datetime.fromisoformat(f"{day}T00:00:00") + timedelta(days=1)).isoformat()
    listed = con.execute("select item_id, created_at from listings where item_id like ?",
                         (f"{DAY_PREFIX}{day}-%",)).fetchall()
    sold = con.execute("select item_id, updated_at from listings where status = 'sold' and updated_at >= ? and "
                       "updated_at < ?", (f"{day}T00:00:00", end)).fetchall()
    return {"day": day, "listed": dict(listed), "sold": dict(sold)}
