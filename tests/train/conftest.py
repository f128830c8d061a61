"""A small snapshot of single-colour photos whose titles name the colour: easy to learn, fast to read."""
import hashlib
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 230, 40)}


def write_colour_snapshot(path, n: int = 256, row_group_size: int = 100, seed: int = 0):
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    rows = []
    for i in range(n):
        colour = names[int(rng.integers(len(names)))]
        shade = np.array(COLOURS[colour]) + rng.integers(-20, 20, 3)
        buf = io.BytesIO()
        Image.fromarray(np.broadcast_to(shade.clip(0, 255).astype(np.uint8), (24, 24, 3)).copy()).save(buf, "PNG")
        data = buf.getvalue()
        rows.append({"item_id": f"i{i:04d}", "image_sha256": hashlib.sha256(data).hexdigest(),
                     "title": f"{colour} item {i}", "category": "tops", "brand": None, "description": None,
                     "price": 10.0, "image": data})
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path / "part-0.parquet", row_group_size=row_group_size)
    return path


@pytest.fixture(scope="session")
def colour_snapshot(tmp_path_factory):
    return write_colour_snapshot(tmp_path_factory.mktemp("colour") / "listings_snapshot")
