"""``lookalike sample-data``: a believable marketplace in a SQLite file plus an image folder.

Each item has hidden latent attributes — category, colour, pattern, style — that decide how its
photo looks and stay out of the source tables. Titles mention some of them, often not the visual
ones (a seller writes "Kumo tee M 美品", not "red striped slim tee"). Users have preferences
over categories, colours, patterns and styles. In sessions they view items; on an item's page the
similar-items module shows impressions (``source_item_id`` set) and a user clicks one with a
probability that rises with its hidden visual similarity to the page's item and with the user's
taste, so the click log rewards an embedding that sees what titles leave out. Most sessions end
with a "more like this" walk: from the last item viewed the user moves to another item of the
same category, chosen mostly by how it *looks* like the current one (colour, pattern, style:
what titles often omit) and partly by the user's own visual taste, so the next step of a user
is predictable from the photos of their last steps and much less from titles. A small share of
image files is broken or unusual, to exercise extract's quarantine.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike.atomic import atomic_path
from lookalike.sample.images import CATEGORIES, COLOURS, PATTERNS, STYLES, encode, render_product

BRANDS = ("Kumo", "NordLine", "Sakura&Co", "Aoyama", "Fieldday", "Urbanist", "Mori", "Basic Lab", "Hoshi",
          "Trailmark", "Linen House", "Okapi", "Nami", "Redwood", "Studio 9", "Kaze")
CATEGORY_WORDS = {
    "t-shirt": ("t-shirt", "tee", "Tシャツ"), "dress": ("dress", "one-piece", "ワンピース"),
    "trousers": ("trousers", "pants", "パンツ"), "sneaker": ("sneakers", "trainers", "スニーカー"),
    "handbag": ("handbag", "tote", "バッグ"), "backpack": ("backpack", "rucksack", "リュック"),
    "cap": ("cap", "baseball cap", "キャップ"), "watch": ("watch", "wristwatch", "腕時計"),
    "mug": ("mug", "coffee cup", "マグカップ"), "lamp": ("lamp", "desk light", "ランプ"),
    "chair": ("chair", "stool", "椅子"), "bottle": ("bottle", "water bottle", "ボトル"),
    "vase": ("vase", "flower vase", "花瓶"), "sunglasses": ("sunglasses", "shades", "サングラス"),
}
COLOUR_JA = {"red": "赤", "blue": "青", "green": "緑", "yellow": "黄色", "black": "黒", "white": "白",
             "pink": "ピンク", "orange": "オレンジ", "purple": "紫", "brown": "茶色"}
PATTERN_WORDS = {"stripes": ("striped", "stripe", "ボーダー"), "dots": ("polka dot", "dotted", "ドット"),
                 "check": ("checked", "plaid", "チェック"), "gradient": ("gradient", "ombre", "グラデーション")}
STYLE_WORDS = {"classic": ("classic", "regular"), "slim": ("slim", "slim fit"), "two-tone": ("two-tone", "bicolour")}
NOISE = ("new", "used", "free shipping", "送料無料", "美品", "rare", "sale", "like new", "未使用", "bundle ok",
         "#fashion", "quick ship", "nego ok")
SIZES = ("S", "M", "L", "XL", "Free size", "26cm", "27.5cm", "350ml", "one size")
PRICE_BASE = {c: 1500 + 700 * i for i, c in enumerate(CATEGORIES)}
REPOST_SHARE = 0.015  # listings that reuse an earlier listing's photo, title and product (same image_sha256)

# "More like this" walks at the end of sessions: how often, how long, how sharply the next item
# follows the current one's looks (BROWSE_SHARPNESS × visual similarity in [0, 1]) and the
# user's visual taste (BROWSE_TASTE × taste in [0, 1]).
BROWSE_SHARE, BROWSE_MEAN_STEPS, BROWSE_SHARPNESS, BROWSE_TASTE = 0.9, 3.0, 14.0, 2.0
BROWSE_LOOKS = {"colour": 1.0, "pattern": 0.35, "style": 0.25}  # colour first: what a glance at a photo gives

# Visual similarity as a user perceives it: weights of the hidden attributes two items share.
SIMILARITY_WEIGHTS = {"category": 1.0, "colour": 1.0, "pattern": 0.8, "style": 0.6}
SCHEMA_SQL = """
create table listings(
  item_id     text primary key,
  title       text not null,
  description text,
  category    text,
  brand       text,
  price       real,
  status      text not null,
  seller_id   text,
  image_key   text,
  created_at  timestamp not null,
  updated_at  timestamp not null);
create table interactions(
  user_id        text not null,
  session_id     text,
  event          text not null,
  item_id        text not null,
  source_item_id text,
  ts             timestamp not null);
create index interactions_ts on interactions(ts);
"""


@dataclass(frozen=True)
class SampleSpec:
    items: int = 10000
    users: int = 2000
    days: int = 120
    seed: int = 0
    end: date | None = None  # last day with data is end - 1; default: today (UTC)
    image_size: int = 128


@dataclass(frozen=True)
class Taste:
    """A user's hidden preferences: three categories, two colours, a pattern and a style."""
    categories: frozenset
    colours: frozenset
    pattern: str
    style: str

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "Taste":
        return cls(frozenset(rng.choice(CATEGORIES, size=3, replace=False)),
                   frozenset(rng.choice(list(COLOURS), size=2, replace=False)), str(rng.choice(PATTERNS)),
                   str(rng.choice(STYLES)))

    def __call__(self, a: dict) -> float:
        """How much the user likes an item with hidden attributes ``a``."""
        return (1.5 * (a["category"] in self.categories) + 1.2 * (a["colour"] in self.colours)
                + 0.8 * (a["pattern"] == self.pattern) + 0.6 * (a["style"] == self.style))


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S")


def _title(rng: np.random.Generator, attrs: dict, brand: str | None) -> str:
    words: list[str] = []
    if brand and rng.random() < 0.7:
        words.append(brand)
    if rng.random() < 0.45:
        words.append(COLOUR_JA[attrs["colour"]] if rng.random() < 0.2 else attrs["colour"])
    if attrs["pattern"] in PATTERN_WORDS and rng.random() < 0.35:
        words.append(str(rng.choice(PATTERN_WORDS[attrs["pattern"]])))
    if rng.random() < 0.25:
        words.append(str(rng.choice(STYLE_WORDS[attrs["style"]])))
    if rng.random() < 0.85:
        words.append(str(rng.choice(CATEGORY_WORDS[attrs["category"]], p=[0.55, 0.3, 0.15])))
    if rng.random() < 0.4:
        words.append(str(rng.choice(SIZES)))
    for _ in range(rng.poisson(0.8)):
        words.append(str(rng.choice(NOISE)))
    return " ".join(words)


def _similarity(a: dict, b: dict) -> float:
    return sum(w for key, w in SIMILARITY_WEIGHTS.items() if a[key] == b[key])


def visual_similarity(a: dict, b: dict) -> float:
    """How alike two items look to a user, in [0, 1], from their hidden attributes."""
    return _similarity(a, b) / sum(SIMILARITY_WEIGHTS.values())


def click_probability(visual: float, taste: float) -> float:
    """A user clicks an item the similar-items module shows with this probability: mostly how
    alike it looks to the page's item (``visual_similarity``), a little the user's ``taste`` for it.
    The sample's log and the simulated A/B test (``lookalike simulate-ab``) both click by it."""
    return 0.02 + 0.55 * visual ** 3 + 0.03 * taste


def purchase_after_click(taste: float) -> float:
    """The probability that a module click is followed by a purchase of the clicked item."""
    return 0.05 * (1 + taste)


def _browse(rng, user_id: str, session_id: str, current: int, ts: datetime, same_category: np.ndarray,
            available: int, attrs: list[dict], looks: dict, look_weight: float, fav_colours: set, fav_pattern: str,
            fav_style: str) -> list[tuple]:
    """A "more like this" walk from ``current`` through same-category items (see the module docstring)."""
    pool = same_category[same_category < available]
    taste = (np.isin(looks["colour"][pool], list(fav_colours)) * 0.5 + (looks["pattern"][pool] == fav_pattern) * 0.25
             + (looks["style"][pool] == fav_style) * 0.25)
    rows = []
    for _ in range(1 + rng.poisson(BROWSE_MEAN_STEPS - 1)):
        here = attrs[current]
        similar = sum(weight * (looks[key][pool] == here[key]) for key, weight in BROWSE_LOOKS.items()) / look_weight
        logits = BROWSE_SHARPNESS * similar + BROWSE_TASTE * taste
        logits[pool == current] = -np.inf
        if not np.isfinite(logits).any():
            break
        weights = np.exp(logits - logits[np.isfinite(logits)].max())
        current = int(rng.choice(pool, p=weights / weights.sum()))
        ts += timedelta(seconds=float(rng.uniform(10, 120)))
        rows.append((user_id, session_id, "view", f"i{current:06d}", None, _iso(ts)))
    return rows


def _write_bad_image(path: Path, kind: str, rng: np.random.Generator, good: bytes) -> str:
    """Write one broken or unusual image file; returns its file name."""
    if kind == "truncated":
        path = path.with_suffix(".jpg")
        path.write_bytes(good[: len(good) // 3])
    elif kind == "zero-byte":
        path = path.with_suffix(".jpg")
        path.write_bytes(b"")
    elif kind == "not-an-image":
        path = path.with_suffix(".jpg")
        path.write_text("<html><body>404 Not Found</body></html>")
    elif kind == "huge":  # 9000 x 9000: over the decompression-bomb guard, tiny on disk
        path = path.with_suffix(".png")
        Image.new("RGB", (9000, 9000), (200, 200, 200)).save(path, optimize=True)
    return path.name


def generate(out: Path, spec: SampleSpec, progress=print) -> dict:
    """Write ``marketplace.db`` and ``images/`` under ``out``; returns a summary dict."""
    rng = np.random.default_rng(spec.seed)
    end = spec.end or datetime.now(timezone.utc).date()
    end_dt = datetime.combine(end, time(0, 0))
    start_dt = end_dt - timedelta(days=spec.days)
    out.mkdir(parents=True, exist_ok=True)
    images_dir = out / "images"
    images_dir.mkdir(exist_ok=True)
    db_path = out / "marketplace.db"

    # ---- items ----
    n = spec.items
    cats = rng.choice(CATEGORIES, size=n)
    attrs = [
        {"category": str(cats[i]), "colour": str(rng.choice(list(COLOURS))), "pattern": str(rng.choice(PATTERNS)),
         "style": str(rng.choice(STYLES))}
        for i in range(n)
    ]
    sellers = [f"s{j:04d}" for j in range(max(10, n // 10))]
    bad_kinds = ["truncated", "zero-byte", "not-an-image", "huge", "missing", "no-key"]
    unusual_kinds = ["cmyk", "alpha-png", "large", "webp"]
    listings = []
    titles: list[str] = []
    photo_keys: dict[int, str] = {}  # item → its valid photo's key (what a repost may copy)
    # Reposts (a seller listing the same product again with the same photo) are drawn from a
    # generator of their own, so adding them leaves every other draw of the sample unchanged.
    reposts = np.random.default_rng([spec.seed, 7])
    created = np.sort(rng.uniform(0, spec.days - 0.01, size=n))
    for i in range(n):
        a = attrs[i]
        item_id = f"i{i:06d}"
        repost_of = None
        if photo_keys and reposts.random() < REPOST_SHARE:
            repost_of = sorted(photo_keys)[int(reposts.integers(len(photo_keys)))]
        brand = str(rng.choice(BRANDS)) if rng.random() < 0.85 else None
        title = _title(rng, a, brand)
        r = rng.random()
        if r < 0.01:
            title = ""
        elif r < 0.03 and titles:
            title = titles[int(rng.integers(len(titles)))]  # a seller re-using another listing's title
        titles.append(title)
        c_at = start_dt + timedelta(days=float(created[i]))
        u_at = min(c_at + timedelta(days=float(rng.exponential(3))), end_dt - timedelta(seconds=1))
        status = str(rng.choice(["on_sale", "sold", "deleted"], p=[0.72, 0.21, 0.07]))
        watermark = str(rng.choice(["SAMPLE", "@shop", "Lookalike"])) if rng.random() < 0.05 else None
        img = render_product(rng, size=spec.image_size, watermark=watermark, **a)
        fmt = str(rng.choice(["JPEG", "PNG", "WEBP"], p=[0.8, 0.12, 0.08]))
        ext = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}[fmt]
        shard = images_dir / item_id[-2:]
        shard.mkdir(exist_ok=True)
        name = f"{item_id}{ext}"
        r = rng.random()
        if repost_of is not None:  # the same product and photo file as an earlier listing
            attrs[i] = a = dict(attrs[repost_of])
            image_key, title = photo_keys[repost_of], titles[repost_of]
            titles[-1] = title
        elif r < 0.012:  # broken files: quarantined by extract with a reason
            kind = bad_kinds[int(rng.integers(len(bad_kinds)))]
            if kind == "no-key":
                image_key = None
            elif kind == "missing":
                image_key = f"{item_id[-2:]}/{item_id}.jpg"
            else:
                image_key = f"{item_id[-2:]}/" + _write_bad_image(shard / item_id, kind, rng, encode(img, "JPEG"))
        else:
            if r < 0.03:  # unusual but valid files: extract must normalise them
                kind = unusual_kinds[int(rng.integers(len(unusual_kinds)))]
                if kind == "cmyk":
                    img, fmt, ext = img.convert("CMYK"), "JPEG", ".jpg"
                elif kind == "alpha-png":
                    rgba = img.convert("RGBA")
                    rgba.putalpha(Image.linear_gradient("L").resize(img.size))  # partly transparent
                    img, fmt, ext = rgba, "PNG", ".png"
                elif kind == "large":
                    img, fmt, ext = img.resize((2400, 2400), Image.Resampling.BICUBIC), "JPEG", ".jpg"
                else:
                    fmt, ext = "WEBP", ".webp"
                name = f"{item_id}{ext}"
            (shard / name).write_bytes(encode(img, fmt))
            image_key = photo_keys[i] = f"{item_id[-2:]}/{name}"
        price = round(float(PRICE_BASE[a["category"]] * rng.lognormal(0, 0.5)), -1)
        category = a["category"] if rng.random() < 0.96 else None
        description = f"{title}. Condition: {rng.choice(['good', 'fair', 'excellent'])}." if rng.random() < 0.6 else None
        listings.append((item_id, title, description, category, brand, price, status,
                         str(rng.choice(sellers)), image_key, _iso(c_at), _iso(u_at)))
        if (i + 1) % max(1, n // 4) == 0:
            progress(f"  items: {i + 1}/{n}")

    # ---- users and interactions ----
    created_days = created
    by_cat: dict[str, np.ndarray] = {c: np.flatnonzero(cats == c) for c in CATEGORIES}
    rows = []
    # The walks draw from their own generator: the rest of the sample is the same with or without them.
    browse_rng = np.random.default_rng([spec.seed, 11])
    looks = {key: np.array([a[key] for a in attrs]) for key in BROWSE_LOOKS}
    look_weight = sum(BROWSE_LOOKS.values())
    for u in range(spec.users):
        user_id = f"u{u:05d}"
        user_taste = Taste.draw(rng)
        fav_colours, fav_pattern, fav_style = set(user_taste.colours), user_taste.pattern, user_taste.style

        def taste(j: int) -> float:
            return user_taste(attrs[j])

        for s in range(max(1, rng.poisson(7))):
            day = rng.uniform(5, spec.days - 0.05)
            ts = start_dt + timedelta(days=float(day))
            session_id = f"{user_id}-{s}"
            available = int(np.searchsorted(created_days, day))  # items listed before the session
            if available < 50:
                continue
            pool = rng.integers(0, available, size=40)
            weights = np.exp(np.array([taste(int(j)) for j in pool]))
            viewed = rng.choice(pool, size=min(3, len(pool)), replace=False, p=weights / weights.sum())
            for src in viewed:
                src = int(src)
                ts += timedelta(seconds=float(rng.uniform(20, 300)))
                rows.append((user_id, session_id, "view", f"i{src:06d}", None, _iso(ts)))
                if rng.random() < 0.1 * (1 + taste(src)):
                    rows.append((user_id, session_id, "purchase", f"i{src:06d}", None, _iso(ts + timedelta(seconds=60))))
                if rng.random() > 0.7:
                    continue
                # The similar-items module on src's page: a legacy recommender shows mostly
                # same-category items plus a few popular ones from anywhere.
                same = by_cat[attrs[src]["category"]]
                same = same[same < available]
                shown = set(int(j) for j in rng.choice(same, size=min(6, len(same)), replace=False) if j != src)
                shown |= set(int(j) for j in rng.integers(0, available, size=3) if j != src)
                for j in sorted(shown):
                    rows.append((user_id, session_id, "impression", f"i{j:06d}", f"i{src:06d}", _iso(ts)))
                for j in sorted(shown):
                    if rng.random() < click_probability(visual_similarity(attrs[src], attrs[j]), taste(j)):
                        click_ts = ts + timedelta(seconds=float(rng.uniform(2, 60)))
                        rows.append((user_id, session_id, "click", f"i{j:06d}", f"i{src:06d}", _iso(click_ts)))
                        rows.append((user_id, session_id, "view", f"i{j:06d}", None, _iso(click_ts + timedelta(seconds=1))))
                        if rng.random() < purchase_after_click(taste(j)):
                            rows.append((user_id, session_id, "purchase", f"i{j:06d}", None,
                                         _iso(click_ts + timedelta(seconds=90))))
            if browse_rng.random() < BROWSE_SHARE:
                rows += _browse(browse_rng, user_id, session_id, int(viewed[-1]), ts + timedelta(minutes=10),
                                by_cat[attrs[int(viewed[-1])]["category"]], available, attrs, looks, look_weight,
                                fav_colours, fav_pattern, fav_style)
        if (u + 1) % max(1, spec.users // 4) == 0:
            progress(f"  users: {u + 1}/{spec.users}")

    with atomic_path(db_path) as tmp_db:
        con = sqlite3.connect(tmp_db)
        con.executescript(SCHEMA_SQL)
        con.executemany("insert into listings values (?,?,?,?,?,?,?,?,?,?,?)", listings)
        con.executemany("insert into interactions values (?,?,?,?,?,?)", rows)
        con.commit()
        con.close()
    summary = {"items": n, "users": spec.users, "interactions": len(rows), "days": spec.days, "seed": spec.seed,
               "end": end.isoformat(), "database": str(db_path), "images": str(images_dir)}
    # Hidden attributes, for benchmarks and tests that check what neighbours share; never read by the pipeline.
    (out / "hidden_attributes.json").write_text(json.dumps({f"i{i:06d}": a for i, a in enumerate(attrs)}))
    (out / "sample.json").write_text(json.dumps(summary, indent=2))
    return summary
