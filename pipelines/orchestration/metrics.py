"""Lookalike's own metrics, sent through Airflow's metrics settings (``[metrics]``: StatsD, or OpenTelemetry),
so they land wherever the deployment already sends Airflow's.

Gauges, each named ``lookalike.<name>`` (after Airflow's own prefix, ``airflow.`` by default), set by the task
that knows the figure; docs/operations.md lists them:

- after ``publish`` of lookalike_nightly: ``rows.<table>`` per published table; ``neighbors.recall_at_k``
  (measured on a sample, 1 for exact search), ``neighbors.incremental`` (1 when the lists were updated, 0 when
  searched in full); ``drift.coverage``, ``drift.score_p10|p50|p90``, ``drift.neighbor_overlap``,
  ``drift.breaches``; ``extract.quarantined.<what>`` (listings of the window, catalogue listings, events),
  ``extract.photos_fetched``, ``extract.photos_reused``; ``embed.reused``, ``embed.computed``;
- after each ``handoff``: ``serving.<sink>.<feed>.generation`` and ``serving.<sink>.<feed>.age_seconds`` (since
  the live generation was switched; an intraday hour sets it from its ``as_of``);
- after each intraday ``update``: ``intraday.lists_changed``, ``intraday.changes_since_night``,
  ``intraday.seconds``.

Outside a DAG run (the CLI) nothing is sent. The figures are computed by the functions below from what the
stages record, so they are tested without a listener; ``emit`` sends them.
"""
from __future__ import annotations

import logging
import re
from datetime import datetime, timezone

log = logging.getLogger(__name__)

PREFIX = "lookalike"


def _name(*parts: str) -> str:
    """A StatsD-safe metric name: letters, digits, '_' and '.' only."""
    return ".".join(re.sub(r"[^A-Za-z0-9_]+", "_", part).strip("_").lower() for part in parts)


def published(record: dict, embed_stats: dict | None) -> dict[str, float]:
    """The gauges of a published night, from its run record (``_runs/<ds>.json``) and embed_stats.json."""
    out = {_name("rows", table): rows for table, rows in (record.get("rows") or {}).items()}
    neighbors = record.get("neighbors") or {}
    if neighbors.get("recall_at_k") is not None:
        out["neighbors.recall_at_k"] = neighbors["recall_at_k"]
    if neighbors.get("mode"):
        out["neighbors.incremental"] = 1.0 if neighbors["mode"] == "incremental" else 0.0
    drift = record.get("drift") or {}
    profile = drift.get("profile") or {}
    if "coverage" in profile:
        out["drift.coverage"] = profile["coverage"]
    for q, value in (profile.get("score_quantiles") or {}).items():
        out[_name("drift", f"score_p{round(float(q) * 100)}")] = value
    if (drift.get("overlap") or {}).get("mean") is not None:
        out["drift.neighbor_overlap"] = drift["overlap"]["mean"]
    if drift:
        out["drift.breaches"] = len(drift.get("breaches") or [])
    extract = record.get("extract") or {}
    for what, count in (extract.get("quarantined") or {}).items():
        out[_name("extract", "quarantined", what)] = count
    for key in ("fetched", "reused"):
        if key in (extract.get("photos") or {}):
            out[_name("extract", f"photos_{key}")] = extract["photos"][key]
    for key in ("reused", "computed"):
        if embed_stats and key in embed_stats:
            out[_name("embed", key)] = embed_stats[key]
    return {name: float(value) for name, value in out.items() if value is not None}


def served(result: dict, feed: str, now: datetime | None = None) -> dict[str, float]:
    """The gauges of a hand-off (nightly or intraday): each store's live generation and its age."""
    now = now or datetime.now(timezone.utc)
    out = {}
    for sink, done in (result.get("sinks") or {}).items():
        if "generation" not in done:
            continue
        out[_name("serving", sink, feed, "generation")] = float(done["generation"])
        when = done.get("as_of") or done.get("switched_at")
        if when:
            moment = datetime.fromisoformat(when)
            moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
            out[_name("serving", sink, feed, "age_seconds")] = round((now - moment).total_seconds(), 1)
    return out


def hour(record: dict) -> dict[str, float]:
    """The gauges of an intraday update (its ``hour.json``)."""
    if "skipped" in record:
        return {}
    return {"intraday.lists_changed": float(record["lists_changed"]),
            "intraday.changes_since_night": float(record["changes_since_night"]),
            "intraday.seconds": float(record["seconds"]["total"])}


def emit(gauges: dict[str, float]) -> None:
    """Send ``gauges`` through Airflow's metrics (a no-op unless ``[metrics]`` turns a backend on)."""
    try:
        from airflow.sdk.observability.stats import Stats
    except ImportError:  # not inside Airflow
        return
    for name, value in sorted(gauges.items()):
        try:
            Stats.gauge(f"{PREFIX}.{name}", value)
        except Exception as exc:  # noqa: BLE001 - a metrics backend never fails a night
            log.warning("metrics: %s not sent: %s", name, exc)
            return
    log.info("metrics: %d lookalike.* gauges sent", len(gauges))
