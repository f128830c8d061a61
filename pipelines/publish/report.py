"""``lookalike report``: a self-contained HTML picture of one published run.

The page shows sampled query items with their top neighbours as thumbnails and scores, neighbour
coverage and score distributions per category (matplotlib, inlined as SVG), the offline
evaluation (by category too, and nDCG@5 over the kept days), each running experiment's A/B
results with its CTR lift over the days, and the neighbour index's statistics. Everything is read from the published
partition of ``ds`` through the analysts' views; thumbnails come from the run's catalogue in the
work area (the normalised photos extract stored) or, failing that, from the source image store.
Images are inlined as data URIs, so the file can be mailed or attached to a ticket.
"""
from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lookalike.systems import (CHOSEN_COLUMNS, FACET_LABELS, HYBRID, IMAGE_BASELINE, PRODUCTION, SCORED, SIGLIP,
                               TEXT_BASELINE, chosen_rows)
from lookalike.config import Config
from lookalike.errors import LookalikeError
from lookalike.extract.images import read_image_bytes
from lookalike.neighbors.describe import describe_recall
from lookalike.query import connect
from lookalike.atomic import atomic_write_text
from lookalike.storage import Warehouse

log = logging.getLogger(__name__)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { margin-bottom: 4px; } .sub { color: #666; margin-top: 0; }
table.metrics { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }
table.metrics td, table.metrics th { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
table.metrics th:first-child, table.metrics td:first-child { text-align: left; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; } .plots svg { max-width: 100%; height: auto; }
.query { display: flex; align-items: flex-start; gap: 6px; margin: 10px 0; padding-bottom: 8px;
         border-bottom: 1px solid #eee; }
.card { width: 92px; font-size: 11px; text-align: center; }
.card img, .card .missing { width: 84px; height: 84px; object-fit: contain; border: 3px solid #ccc;
                            background: #f4f4f4; display: block; margin: 0 auto; }
.card.q img, .card.q .missing { border-color: #333; }
.card.same img { border-color: #3a3; } .card.other img { border-color: #d84; }
.card .t { overflow: hidden; white-space: nowrap; text-overflow: ellipsis; }
.legend span { padding: 0 6px; border-left: 6px solid; margin-right: 12px; }
"""


def _svg(fig) -> str:
    """A matplotlib figure as inline SVG (no XML header, deterministic ids)."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _pyplot():
    """matplotlib's pyplot, headless, with the page's deterministic SVG settings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "lookalike", "svg.fonttype": "none", "font.size": 9})
    return plt


def _plots(per_category: list[tuple], top1: dict[str, list[float]], by_rank: list[tuple]) -> list[str]:
    """Coverage per category, rank-1 score distribution per category, mean score by rank."""
    plt = _pyplot()
    names = [row[0] for row in per_category]
    figs = []

    fig, ax = plt.subplots(figsize=(6, 0.25 * len(names) + 1))
    coverage = [row[2] / row[1] if row[1] else 0 for row in per_category]
    ax.barh(names, coverage, color="#4a7fb5")
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("share of on-sale items with a full neighbour list")
    ax.set_title("Coverage per category")
    figs.append(_svg(fig))

    fig, ax = plt.subplots(figsize=(6, 0.25 * len(names) + 1))
    data = [top1.get(name) or [np.nan] for name in names]
    ax.boxplot(data, vert=False, tick_labels=names, showfliers=False)
    ax.invert_yaxis()
    ax.set_xlabel("cosine similarity of the rank-1 neighbour")
    ax.set_title("Rank-1 score per category")
    figs.append(_svg(fig))

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot([r[0] for r in by_rank], [r[1] for r in by_rank], marker="o", label="mean")
    ax.fill_between([r[0] for r in by_rank], [r[2] for r in by_rank], [r[3] for r in by_rank], alpha=0.2,
                    label="10th–90th percentile")
    ax.set_xlabel("rank")
    ax.set_ylabel("cosine similarity")
    ax.set_title("Score by rank")
    ax.legend()
    figs.append(_svg(fig))
    return figs


def _thumbnails(cfg: Config, wh: Warehouse, ds: str, keys: dict[str, str | None]) -> tuple[dict[str, bytes], str]:
    """(item_id → JPEG bytes, where they came from) for the items of ``keys`` (item_id → image_key):
    the run's catalogue in the work area (photos as extract normalised them), else the source
    image store (a folder or s3://, read as extract reads it)."""
    work = wh.work(ds, "catalog")
    if work.exists():
        table = pq.read_table(work, columns=["item_id", "image"], filters=[("item_id", "in", sorted(keys))])
        return dict(zip(table.column("item_id").to_pylist(), table.column("image").to_pylist())), \
            "the run's catalogue (work area)"
    found = {}
    for item, key in keys.items():
        data, _ = read_image_bytes(cfg.source.images, key, cfg.extract.max_image_bytes)
        if data and (thumb := _thumbnail(data)) is not None:
            found[item] = thumb
    return found, f"the source image store {cfg.source.images}"


def _thumbnail(data: bytes, size: int = 96) -> bytes | None:
    """A source photo (any format, any size) as a small JPEG; None when it cannot be decoded."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale
            img = img.convert("RGB")
            img.thumbnail((size, size))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=85)
            return buf.getvalue()
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _card(item: str, title: str | None, image: bytes | None, caption: str, css: str) -> str:
    picture = (f'<img alt="{html.escape(item)}" src="data:image/jpeg;base64,{base64.b64encode(image).decode()}">'
               if image else '<div class="missing"></div>')
    return (f'<div class="card {css}" title="{html.escape(title or "")}">{picture}'
            f'<div class="t">{html.escape(title or item)}</div><div>{caption}</div></div>')


def _metrics_table(con, ds: str) -> str:
    rows = con.execute("""
        select metric, k, system, value, ci_low, ci_high from eval_metrics_all where ds = ? and segment is null
        order by metric, k, system""", [ds]).fetchall()
    if not rows:
        return "<p>No offline evaluation for this ds.</p>"
    systems = sorted({r[2] for r in rows}, key=lambda s: (s != SIGLIP, s))
    cells: dict[tuple, dict] = {}
    for metric, k, system, value, lo, hi in rows:
        cells.setdefault((metric, k), {})[system] = (value, lo, hi)
    head = "".join(f"<th>{html.escape(s)}</th>" for s in systems)
    body = []
    for (metric, k), by in cells.items():
        tds = []
        for s in systems:
            value, lo, hi = by.get(s, (None, None, None))
            interval = f" <small>[{lo:.3f}, {hi:.3f}]</small>" if lo is not None and hi is not None else ""
            tds.append(f"<td>{value:.4f}{interval}</td>" if value is not None else "<td></td>")
        body.append(f"<tr><td>{metric}{'@' + str(k) if k else ''}</td>{''.join(tds)}</tr>")
    return f'<table class="metrics"><tr><th>metric</th>{head}</tr>{"".join(body)}</table>'


def _segment_table(con, ds: str, prefix: str, metric: str, intro: str, column: str, unit: str,
                   label=lambda name: name) -> str:
    """One eval_metrics value@5 per segment ``<prefix>=<name>`` and system, as an HTML table ("" without rows)."""
    rows = con.execute("""
        select segment, system, value, n from eval_metrics_all
        where ds = ? and segment like ? and metric = ? and k = 5 order by segment, system""",
                       [ds, f"{prefix}=%", metric]).fetchall()
    if not rows:
        return ""
    systems = sorted({r[1] for r in rows}, key=lambda s: (s != SIGLIP, s))
    cells: dict[str, dict] = {}
    for segment, system, value, n in rows:
        cells.setdefault(segment.removeprefix(f"{prefix}="), {})[system] = (value, n)
    head = "".join(f"<th>{html.escape(s)}</th>" for s in systems)
    body = "".join(
        f"<tr><td>{html.escape(label(c))} <small>({next(iter(by.values()))[1]} {unit})</small></td>"
        + "".join(f"<td>{by[s][0]:.4f}</td>" if s in by else "<td></td>" for s in systems) + "</tr>"
        for c, by in cells.items())
    return f'<p>{intro}</p><table class="metrics"><tr><th>{column}</th>{head}</tr>{body}</table>'


def _category_table(con, ds: str) -> str:
    """nDCG@5 per category of the source item, per system (eval_metrics' segment rows)."""
    return _segment_table(con, ds, "category", "ndcg", "nDCG@5 by the category of the source item:", "category",
                          "queries")


def _facet_table(con, ds: str) -> str:
    """What a shopper sees, per system, without module clicks yet: the share of the top 5 sharing the held-out
    listing's category, colour and product group (eval_metrics' ``facet=`` rows, P@5)."""
    return _segment_table(con, ds, "facet", "precision",
                          "What a shopper sees (held-out listings, the share of the top 5 that shares the "
                          "listing's category, colour or product):", "facet", "listings",
                          lambda name: FACET_LABELS.get(name, name))


def _ab_section(con, ds: str) -> str:
    """Each running experiment's ab_results table, and its CTR lift over the experiment's days."""
    rows = con.execute("""select experiment, variant, is_control, metric, users, impressions, value, lift, lift_low,
                                 lift_high, p_value, power, srm_p_value, first_day, last_day, warning
                          from ab_results_all where ds = ?
                          order by experiment, is_control desc, variant,
                                   case metric when 'ctr' then 0 when 'conversion' then 1 else 2 end""",
                       [ds]).fetchall()
    arms = con.execute("""select experiment, variant, is_control, serve, model_version, share from
                          experiment_variants_all where ds = ? order by experiment, bucket_low""", [ds]).fetchall()
    if not arms:
        return "<p>No experiment ran on this ds.</p>"
    parts = []
    for name in sorted({a[0] for a in arms}):
        served = ", ".join(f"<b>{html.escape(v)}</b>{' (control)' if c else ''}: {html.escape(s)} = "
                           f"{html.escape(m or '')}, {share:.0%}" for e, v, c, s, m, share in arms if e == name)
        mine = [r for r in rows if r[0] == name]
        parts.append(f"<h3>{html.escape(name)}</h3><p>{served}</p>")
        if not mine:
            parts.append("<p>No logged module impression of this experiment yet.</p>")
            continue
        body = []
        for (_, variant, control, metric, users, impressions, value, lift, lo, hi, p, power, srm, first, last,
             warning) in mine:
            shown = "" if value is None else (f"{value:.2f}" if metric == "revenue_per_user" else f"{value:.4f}")
            interval = "" if lift is None else f"{lift:+.1%} <small>[{lo:+.1%}, {hi:+.1%}]</small>"
            body.append(f"<tr><td>{html.escape(variant)}{' (control)' if control else ''}</td><td>{metric}</td>"
                        f"<td>{users:,}</td><td>{impressions:,}</td><td>{shown}</td><td>{interval}</td>"
                        f"<td>{'' if p is None else f'{p:.3g}'}</td><td>{'' if power is None else f'{power:.2f}'}</td></tr>")
        warnings = sorted({w for r in mine if r[15] for w in r[15].split("; ")})
        parts.append(f"<p>Events {mine[0][13]} to {mine[0][14]}; sample-ratio χ² p = {mine[0][12]:.3g}; 95% intervals "
                     "by the delta method over users.</p>"
                     '<table class="metrics"><tr><th>variant</th><th>metric</th><th>users</th><th>impressions</th>'
                     f'<th>value</th><th>lift vs control</th><th>p</th><th>power</th></tr>{"".join(body)}</table>'
                     + "".join(f"<p><b>warning:</b> {html.escape(w)}</p>" for w in warnings))
        trend = _lift_trend(con, name, ds)
        if trend:
            parts.append(f'<div class="plots">{trend}</div>')
    return "".join(parts)


def _lift_trend(con, experiment: str, ds: str) -> str | None:
    """The CTR lift and its interval on every kept ds of the experiment, up to ``ds``."""
    rows = con.execute("""select ds, variant, lift, lift_low, lift_high from ab_results_all
                          where experiment = ? and metric = 'ctr' and lift is not null and ds <= ? order by ds""",
                       [experiment, ds]).fetchall()
    if not rows:
        return None
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(6, 3))
    for variant in sorted({r[1] for r in rows}):
        mine = [r for r in rows if r[1] == variant]
        days = [r[0] for r in mine]
        ax.plot(days, [100 * r[2] for r in mine], marker="o", label=variant)
        ax.fill_between(days, [100 * r[3] for r in mine], [100 * r[4] for r in mine], alpha=0.2)
    ax.axhline(0, color="#888", lw=1)
    ax.set_title(f"{experiment}: CTR lift vs control by ds (95% interval)")
    ax.set_ylabel("lift, %")
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    ax.legend(fontsize=8)
    return _svg(fig)


def _ndcg_trend(con, ds: str) -> str | None:
    """nDCG@5 per ds over the kept eval_metrics partitions, one line per system."""
    rows = con.execute("""select ds, system, value, ci_low, ci_high from eval_metrics_all
                          where metric = 'ndcg' and k = 5 and segment is null and ds <= ?
                            and list_contains(?, system)
                          order by ds""", [ds, [*SCORED, PRODUCTION]]).fetchall()
    if not rows:
        return None
    plt = _pyplot()

    labels = {SIGLIP: "candidate", PRODUCTION: "production", HYBRID: "candidate + baseline blend",
              IMAGE_BASELINE: "image baseline", TEXT_BASELINE: "text baseline"}
    fig, ax = plt.subplots(figsize=(6, 3))
    for system in labels:
        mine = [r for r in rows if r[1] == system]
        if mine:
            ax.errorbar([r[0] for r in mine], [r[2] for r in mine],
                        yerr=[[r[2] - (r[3] if r[3] is not None else r[2]) for r in mine],
                              [(r[4] if r[4] is not None else r[2]) - r[2] for r in mine]],
                        marker="o", capsize=3, label=labels[system])
    ax.set_title("Offline nDCG@5 by ds (each ds's own log; 95% interval)")
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    ax.legend(fontsize=8)
    return _svg(fig)


def _run_table(record: dict | None) -> str:
    if not record:
        return "<p>No run record for this ds.</p>"
    rows = [("run", record.get("run_id")), ("warehouse", record.get("warehouse"))]
    rows += [(f"rows: {t}", f"{n:,}") for t, n in sorted((record.get("rows") or {}).items())]
    n = record.get("neighbors") or {}
    for group in n.get("groups", [])[:1]:
        rows += [("neighbour index", f"{group.get('index')}: {group.get('reason')}"),
                 (f"recall@{n.get('k')}", describe_recall(n)),
                 ("search seconds", f"build {group.get('build_seconds')}, tune {group.get('tune_seconds')}, "
                                    f"search {group.get('search_seconds')}")]
    if n:
        rows += [("neighbour rows with the item's identical photo", f"{n.get('same_image_rows', 0):,}"),
                 ("items left out (fewer than k candidates)", f"{n.get('short_items', 0):,}")]
    body = "".join(f"<tr><td>{html.escape(str(a))}</td><td>{html.escape(str(b))}</td></tr>" for a, b in rows)
    return f'<table class="metrics">{body}</table>' + _chosen_table(record.get("model") or {})


def _chosen_table(decision: dict) -> str:
    """The evaluation's choice of what to serve, and the systems it was chosen from."""
    rows = chosen_rows(decision)
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in CHOSEN_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return (f"<p>{html.escape(decision.get('decision', ''))}</p><p>Chosen from ({html.escape(str(decision.get('measure')))}"
            f", best first):</p><table class=\"metrics\"><tr>{head}</tr>{body}</table>")


def build_report(cfg: Config, ds: str, out: Path | None = None, *, samples: int = 12, shown: int = 10,
                 seed: int = 0) -> Path:
    """Write the HTML report of the published partition ``ds``; returns its path."""
    wh = Warehouse.of(cfg)
    if ds not in wh.entries("item_neighbors"):
        published = ", ".join(wh.entries("item_neighbors")) or "none"
        raise LookalikeError(f"item_neighbors has no published partition ds={ds} (published: {published}); "
                             f"run `lookalike run --ds {ds}` first")
    con = connect(wh)
    items = con.sql("""
        select item_id, title, coalesce(category, '(none)') as category, price, image_key
        from catalog_all where ds = ?""", params=[ds]).to_arrow_table()
    neighbors = con.sql("""
        select item_id, rank, neighbor_id, score, same_image, model_version
        from item_neighbors_all where ds = ? order by item_id, rank""", params=[ds]).to_arrow_table()
    info = {r["item_id"]: r for r in items.to_pylist()}

    per_category = con.execute("""
        with listings as (select item_id, coalesce(category, '(none)') as category from catalog_all
                          where ds = ? and status = 'on_sale'),
             listed as (select distinct item_id from item_neighbors_all where ds = ?)
        select l.category, count(*) as items, count(n.item_id) as with_neighbors
        from listings l left join listed n using (item_id) group by l.category order by l.category""",
                               [ds, ds]).fetchall()
    top1: dict[str, list[float]] = {}
    for category, score in con.execute("""
            select coalesce(c.category, '(none)'), n.score from item_neighbors_all n
            join catalog_all c on c.item_id = n.item_id and c.ds = n.ds where n.ds = ? and n.rank = 1""",
                                       [ds]).fetchall():
        top1.setdefault(category, []).append(score)
    by_rank = con.execute("""
        select rank, avg(score), quantile_cont(score, 0.1), quantile_cont(score, 0.9)
        from item_neighbors_all where ds = ? group by rank order by rank""", [ds]).fetchall()

    # Sampled queries: one per category in turn (seeded), so every category gets a look.
    rng = np.random.default_rng(seed)
    listed = sorted(set(neighbors.column("item_id").to_pylist()))
    by_category: dict[str, list[str]] = {}
    for item in rng.permutation(listed).tolist():
        by_category.setdefault(info.get(item, {}).get("category", "(none)"), []).append(item)
    queries: list[str] = []
    while len(queries) < min(samples, len(listed)):
        for members in by_category.values():
            if members and len(queries) < samples:
                queries.append(members.pop())
    chosen = neighbors.filter(pc.is_in(neighbors.column("item_id"), value_set=pa.array(queries)))
    lists: dict[str, list[dict]] = {}
    for row in chosen.to_pylist():
        lists.setdefault(row["item_id"], []).append(row)

    wanted = set(queries) | {r["neighbor_id"] for q in queries for r in lists[q][:shown]}
    images, thumbs_from = _thumbnails(cfg, wh, ds, {i: info.get(i, {}).get("image_key") for i in wanted})

    gallery = []
    for q in queries:
        meta = info.get(q, {})
        price = f"{meta['price']:,.0f}" if meta.get("price") is not None else ""
        cards = [_card(q, meta.get("title"), images.get(q), f"<b>{html.escape(meta.get('category', ''))}</b> {price}",
                       "q")]
        for row in lists[q][:shown]:
            nb = info.get(row["neighbor_id"], {})
            same = nb.get("category") == meta.get("category")
            caption = f"#{row['rank']} {row['score']:.3f}" + (" ≡photo" if row["same_image"] else "")
            cards.append(_card(row["neighbor_id"], nb.get("title"), images.get(row["neighbor_id"]), caption,
                               "same" if same else "other"))
        gallery.append(f'<div class="query">{"".join(cards)}</div>')

    version = neighbors.column("model_version")[0].as_py() if neighbors.num_rows else "?"
    served = (wh.run_record(ds) or {}).get("served")
    why = f" ({html.escape(served['why'])})" if served else ""
    k = int(pc.max(neighbors.column("rank")).as_py() or 0)
    plots = _plots(per_category, top1, by_rank)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Lookalike {html.escape(ds)}</title>
<style>{STYLE}</style></head><body>
<h1>Lookalike — similar items for ds={html.escape(ds)}</h1>
<p class="sub">serving {html.escape(version)}{why} · {len(listed):,} items × {k} neighbours · thumbnails from
{html.escape(thumbs_from)}</p>
<h2>Sampled items and their nearest neighbours</h2>
<p class="legend">Each row: the query item (dark frame), then its top {min(shown, k)} neighbours with rank and
cosine similarity. <span style="border-color:#3a3">same category</span>
<span style="border-color:#d84">other category</span> ≡photo: byte-identical photo under another id.</p>
{"".join(gallery)}
<h2>Coverage and scores</h2>
<div class="plots">{"".join(plots)}</div>
<h2>Offline evaluation</h2>
{_metrics_table(con, ds)}
{_facet_table(con, ds)}
{_category_table(con, ds)}
<div class="plots">{_ndcg_trend(con, ds) or ""}</div>
<h2>Experiments</h2>
{_ab_section(con, ds)}
<h2>This run</h2>
{_run_table(wh.run_record(ds))}
</body></html>
"""
    out = Path(out) if out else wh.work(ds, "report") / "index.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page)
    log.info("report %s: %d sampled items, %d thumbnails → %s", ds, len(queries), len(images), out)
    return out
