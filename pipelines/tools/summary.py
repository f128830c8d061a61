"""The end-of-run summary: what was published, how the model compares, where to look next."""
from __future__ import annotations

import json
from pathlib import Path

from lookalike.systems import (BASELINES, CHOSEN_COLUMNS, FACET_LABELS, HYBRID, IMAGE_BASELINE, SCORED, SIGLIP,
                               TEXT_BASELINE, chosen_rows)
from lookalike.config import Config
from lookalike.extract import photos
from lookalike.neighbors.describe import describe_mode, describe_recall
from lookalike.storage import PUBLISHED_TABLES, Warehouse

METRIC_LABELS = {("ndcg", 5): "nDCG@5", ("ndcg", 10): "nDCG@10", ("precision", 1): "P@1", ("precision", 3): "P@3",
                 ("recall", 10): "Recall@10", ("mrr", None): "MRR"}


def format_table(columns: list[str], rows: list[tuple]) -> str:
    """Plain fixed-width text table (numbers right-aligned)."""
    def cell(v):
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.4f}"
        return str(v)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) for i in range(len(columns))]

    def fmt(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([fmt(columns), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells])


def _experiments(wh: Warehouse, ds: str) -> list[str]:
    """The experiments running on the ds: each arm and what it served, and the CTR lift so far."""
    if ds not in wh.entries("experiment_variants"):
        return []
    arms = wh.read_partition("experiment_variants", ds).to_pylist()
    results = wh.read_partition("ab_results", ds).to_pylist() if ds in wh.entries("ab_results") else []
    lines = ["Experiments (ab_results; lookalike ab-report --experiment NAME for the whole table):"]
    for name in sorted({a["experiment"] for a in arms}):
        served = ", ".join(f"{a['variant']}{' (control)' if a['is_control'] else ''} {a['model_version']} "
                           f"{a['share']:.0%}" for a in arms if a["experiment"] == name)
        ctr = [r for r in results if r["experiment"] == name and r["metric"] == "ctr" and r["lift"] is not None]
        read = "; ".join(f"{r['variant']} CTR {r['lift']:+.1%} [{r['lift_low']:+.1%}, {r['lift_high']:+.1%}]"
                         for r in ctr) or "no logged module impression yet"
        lines.append(f"  {name}: {served} — {read}")
    return lines + [""]


def _user_recs(wh: Warehouse, ds: str) -> list[str]:
    """The user model's leave-last-out comparison, from the published eval_metrics rows."""
    stats = wh.work(ds, "userrec_stats.json")
    if not stats.exists() or ds not in wh.entries("eval_metrics"):
        return []
    s = json.loads(stats.read_text())
    metrics = [m for m in wh.read_partition("eval_metrics", ds).to_pylist() if m["system"].startswith("userrec_")]
    columns = [("recall", 1, "Recall@1"), ("recall", 10, "Recall@10"), ("mrr", None, "MRR"), ("ndcg", 10, "NDCG@10")]
    by = {(m["system"], m["metric"], m["k"]): m for m in metrics}
    rows = []
    for system in dict.fromkeys(m["system"] for m in metrics):
        rows.append((system.removeprefix("userrec_"),
                     *(f"{by[(system, m, k)]['value']:.4f} [{by[(system, m, k)]['ci_low']:.3f}, "
                       f"{by[(system, m, k)]['ci_high']:.3f}]" if (system, m, k) in by else "" for m, k, _ in columns)))
    return [f"User recommendations: {s['users']} active users (model {s['model_version']}); leave-last-out on "
            f"{s['evaluated']} users over all {s['items']} items (95% bootstrap interval):",
            format_table(["variant", *(label for *_, label in columns)], rows), ""]


def _drift(record: dict | None) -> list[str]:
    """The publish gate's decision against the previous published day (pipelines/publish/drift.py)."""
    gate = (record or {}).get("drift")
    if not gate:
        return []
    if gate["previous_ds"] is None:
        return ["Publish gate: first published day, nothing to compare with", ""]
    overlap = (gate.get("overlap") or {}).get("mean")
    figures = f"coverage {gate['profile']['coverage']:.1%}" + (
        f", {overlap:.1%} of neighbours kept where the photo did not change" if overlap is not None else "")
    lines = [f"Publish gate: {gate['decision']} against {gate['previous_ds']} ({figures})"]
    lines += [f"  {gate['switch']}"] if gate.get("switch") else []
    return lines + [f"  beyond a bound: {b}" for b in gate["breaches"]] + [""]


def _serving(cfg: Config, record: dict | None) -> list[str]:
    """What each online store serves after this ds's hand-offs (the run record's ``serving``)."""
    if not cfg.serving.sink_names:
        return ["Online stores: none configured (serving.sinks; docs/serving.md)", ""]
    handed = (record or {}).get("serving") or {}
    if not handed:
        return ["Online stores: this ds was not handed off (`lookalike handoff --ds`)", ""]
    rows = [(sink, feed, r.get("generation"), r.get("ds"), r.get("switch_s"),
             r.get("note") or r.get("error") or (f"holds the hour of {r['as_of']}" if r.get("as_of") else ""))
            for feed, done in sorted(handed.items()) for sink, r in sorted(done["sinks"].items())]
    return ["Online stores (what the site reads now):",
            format_table(["store", "feed", "live generation", "ds", "switch (s)", "note"], rows), ""]


def run_summary(cfg: Config, ds: str, config_path: str | None = None) -> str:
    wh = Warehouse.of(cfg)
    lines = [f"Lookalike run for ds={ds}", ""]
    rows = []
    for table in PUBLISHED_TABLES:
        entry = wh.entries(table).get(ds)
        rows.append((table, entry["rows"] if entry else None, wh.display(table) if entry else "not published"))
    lines += ["Published tables:", format_table(["table", "rows", "location"], rows), ""]

    metrics = wh.read_partition("eval_metrics", ds).to_pylist() if ds in wh.entries("eval_metrics") else []
    # the user model's rows: _user_recs; per-category rows: lookalike report and eval_metrics
    metrics = [m for m in metrics if m["system"] in SCORED and m.get("segment") is None]
    decision_file = wh.work(ds, "model_decision.json")
    decided = json.loads(decision_file.read_text()) if decision_file.exists() else {}
    protocol = decided.get("protocol", "clicks")
    if metrics:
        by = {(m["system"], m["metric"], m["k"]): m for m in metrics}
        version = next((m["model_version"] for m in metrics if m["system"] == SIGLIP), "?")
        n = next((m["n"] for m in metrics), 0)
        hybrid = any(m["system"] == HYBRID for m in metrics)
        table_rows = []
        for (metric, k), label in METRIC_LABELS.items():
            value = {s: by.get((s, metric, k), {}).get("value") for s in SCORED}
            ci = by.get((SIGLIP, metric, k), {})
            best_base = max((value[s] for s in BASELINES if value[s] is not None), default=None)
            lift = f"{(value[SIGLIP] / best_base - 1) * 100:+.1f}%" if best_base and value[SIGLIP] is not None \
                else "n/a"
            table_rows.append((label, value[SIGLIP], f"[{ci.get('ci_low', 0):.3f}, {ci.get('ci_high', 0):.3f}]",
                               *([value[HYBRID]] if hybrid else []), value[IMAGE_BASELINE], value[TEXT_BASELINE],
                               lift))
        on = (f"{n} source items with similar-items clicks" if protocol == "clicks" else
              f"{n} held-out listings by shared category (no similar-items clicks yet)")
        covered = {s: by.get((s, "coverage", cfg.neighbors.k), {}).get("value") for s in SCORED}
        if any(v is not None for v in covered.values()):
            table_rows.append((f"coverage@{cfg.neighbors.k}", covered[SIGLIP], "",
                               *([covered[HYBRID]] if hybrid else []), covered[IMAGE_BASELINE],
                               covered[TEXT_BASELINE], ""))
        lines += [f"Offline evaluation on {on} (model {version}; 95% bootstrap interval):",
                  format_table(["metric", "fine-tuned", "95% CI", *([HYBRID] if hybrid else []), "image baseline",
                                "text baseline", "fine-tuned vs best baseline"], table_rows)]
        facets = decided.get("facets@5") or {}
        if any(len(f) > 1 for f in facets.values()):  # colour or product group beside category
            lines += ["What a shopper sees (share of the top 5 sharing the listing's category, colour, product, "
                      f"co-purchases; ranked by the {decided.get('measure', 'shopper' + chr(39) + 's score')}):"]
            lines += [f"  {system:<15}" + ", ".join(f"{FACET_LABELS.get(f, f)} {v:.3f}" for f, v in values.items())
                      for system, values in facets.items()]
        if decided.get("chosen_from"):
            lines += [f"What to serve, chosen from ({decided.get('measure')}, best first):",
                      format_table(list(CHOSEN_COLUMNS), chosen_rows(decided))]
        lines += [f"Note: {note}" for note in decided.get("notes", [])] + [""]
    elif decided.get("notes"):
        lines += [f"Offline evaluation: {note}" for note in decided["notes"]] + [""]
    extracted = photos.read_marker(wh, ds)
    if extracted:
        p = extracted["photos"]
        lines += [f"Extract: snapshot {extracted['snapshot_rows']} listings, catalogue {extracted['catalog_rows']}, "
                  f"{extracted['events']} events"
                  + (f" ({extracted['events_reused']} reused from ds={extracted['events_reused_from']})"
                     if extracted.get("events_reused_from") else "")
                  + f" — photos reused {p['reused']}"
                  + (f" (from ds={extracted['photos_reused_from']})" if extracted["photos_reused_from"] else "")
                  + f", fetched {p['fetched']}, quarantined {p['quarantined']}", ""]
    stats = wh.work(ds, "embed_stats.json")
    if stats.exists():
        e = json.loads(stats.read_text())
        lines += [f"Embeddings: {e['catalogue']} catalogue items — reused {e['reused']}, computed {e['computed']} "
                  f"({e['executor']}), quarantined {e['quarantined']}"]
        if e.get("served"):
            lines += [f"Serving {e['served']['version']}: {e['served']['why']}"]
        lines += [""]
    nstats = wh.work(ds, "neighbors_stats.json")
    if nstats.exists():
        n = json.loads(nstats.read_text())
        group = n["groups"][0] if n["groups"] else {}
        lines += [f"Neighbours: {n['rows'] // n['k']} items x {n['k']}, index {'+'.join(n['index'])} "
                  f"({group.get('reason', '')}), {describe_recall(n)}, {n['seconds']:.1f} s; "
                  f"{n['same_image_rows']} neighbour rows share the item's exact photo (same_image)",
                  f"  {describe_mode(n)}", ""]
    record = wh.run_record(ds)
    lines += _drift(record)
    lines += _serving(cfg, record)
    lines += _experiments(wh, ds)
    lines += _user_recs(wh, ds)
    decision = wh.work(ds, "model_decision.json")
    if decision.exists():
        lines += [f"Model registry: {json.loads(decision.read_text())['decision']}", ""]
    report = wh.work(ds, "report") / "index.html"
    if report.exists():
        lines += [f"Report (HTML gallery of this run): {report}", ""]
    lines += [
        f"Warehouse: {wh.display()}   models: {cfg.models}   quarantine details: lookalike query \"select * from quarantine\"",
        "Try:",
        '  lookalike query "select count(*) from item_neighbors"',
        "  lookalike query --file sql/analytics/similar_items.sql --var item_id=<an item_id>",
        "  lookalike query --file sql/analytics/model_vs_baselines.sql",
        "  lookalike query --file sql/analytics/user_history_and_recommendations.sql --var user_id=<a user_id>",
        f"  lookalike report --ds {ds} --out report.html   # the HTML gallery again, anywhere",
    ]
    if cfg.serving.sink_names:
        config = f" --config {config_path}" if config_path else ""
        lines += [f"  lookalike serving status{config}   # what each online store serves, and how old it is",
                  f"  lookalike similar{config} <an item_id>   # one item's list, read as the site reads it"]
    if cfg.source.url.startswith("sqlite:///") and (Path(cfg.source.url.removeprefix("sqlite:///")).parent
                                                    / "hidden_attributes.json").exists():  # the sample
        config = f" --config {config_path}" if config_path else ""
        lines += [f"  lookalike simulate-ab{config} --freshness   # the day after the night, on the sample: nightly-only against hourly "
                  "lists (lookalike_intraday)"]
    if ds in wh.entries("experiment_variants"):
        name = wh.read_partition("experiment_variants", ds).column("experiment")[0].as_py()
        config = f" --config {config_path}" if config_path else ""  # the experiments are in the config
        lines += [f"  lookalike ab-report{config} --experiment {name}   # the A/B test from the logged interactions",
                  f"  lookalike simulate-ab{config} --experiment {name} --days 14   # on the sample: two weeks of "
                  "its users"]
    return "\n".join(lines)
