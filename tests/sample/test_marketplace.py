import json
import sqlite3
from datetime import date

from lookalike.sample.images import CATEGORIES
from lookalike.sample.marketplace import SampleSpec, generate


def _dump(path):
    con = sqlite3.connect(path / "marketplace.db")
    rows = con.execute("select * from listings order by item_id").fetchall(), \
        con.execute("select * from interactions order by user_id, ts, event, item_id").fetchall()
    con.close()
    return rows


def test_same_seed_same_marketplace(tmp_path, sample_dir):
    again = tmp_path / "again"
    generate(again, SampleSpec(items=400, users=120, days=120, seed=1, end=date(2026, 11, 21)),
             progress=lambda *_: None)
    assert _dump(again) == _dump(sample_dir)
    first = sorted((sample_dir / "images").rglob("*"))
    assert [p.read_bytes() for p in sorted((again / "images").rglob("*")) if p.is_file()][:50] == \
        [p.read_bytes() for p in first if p.is_file()][:50]


def test_follows_the_source_contract(sample_dir):
    con = sqlite3.connect(sample_dir / "marketplace.db")
    cols = [r[1] for r in con.execute("pragma table_info(listings)")]
    assert cols == ["item_id", "title", "description", "category", "brand", "price", "status", "seller_id",
                    "image_key", "created_at", "updated_at"]
    assert {r[0] for r in con.execute("select distinct status from listings")} == {"on_sale", "sold", "deleted"}
    events = {r[0] for r in con.execute("select distinct event from interactions")}
    assert events == {"impression", "view", "click", "purchase"}
    # module clicks carry the page's item
    assert con.execute("select count(*) from interactions where event = 'click' and source_item_id is null"
                       ).fetchone()[0] == 0
    first, last = con.execute("select min(created_at), max(created_at) from listings").fetchone()
    assert first >= "2026-07-24" and last < "2026-11-21"


def test_at_least_twelve_categories_and_japanese_titles(sample_dir):
    assert len(CATEGORIES) >= 12
    con = sqlite3.connect(sample_dir / "marketplace.db")
    assert con.execute("select count(distinct category) from listings").fetchone()[0] >= 12
    titles = [r[0] for r in con.execute("select title from listings")]
    assert any(any("\u3040" <= ch <= "\u30ff" or "\u4e00" <= ch <= "\u9fff" for ch in t) for t in titles)
    assert "" in titles or len(set(titles)) < len(titles)  # empty or duplicated titles occur


def test_clicks_follow_hidden_visual_similarity(sample_dir):
    import json

    from lookalike.sample.marketplace import SIMILARITY_WEIGHTS, _similarity

    hidden = json.loads((sample_dir / "hidden_attributes.json").read_text())
    con = sqlite3.connect(sample_dir / "marketplace.db")
    shown = con.execute("select source_item_id, item_id, event from interactions where source_item_id is not null"
                        ).fetchall()
    sim = {"click": [], "impression": []}
    for src, item, event in shown:
        sim[event].append(_similarity(hidden[src], hidden[item]) / sum(SIMILARITY_WEIGHTS.values()))
    assert sum(sim["click"]) / len(sim["click"]) > 1.3 * sum(sim["impression"]) / len(sim["impression"])


def test_reposts_share_the_photo_file_and_the_product(sample_dir):
    con = sqlite3.connect(sample_dir / "marketplace.db")
    shared = con.execute("""select image_key, group_concat(item_id) from listings where image_key is not null
                            group by image_key having count(*) > 1""").fetchall()
    hidden = json.loads((sample_dir / "hidden_attributes.json").read_text())
    assert shared, "the sample should hold reposted photos"
    for key, ids in shared:
        first, *others = ids.split(",")
        assert (sample_dir / "images" / key).is_file()
        assert all(hidden[item] == hidden[first] for item in others)
