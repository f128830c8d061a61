"""Lookalike's gauges, computed from what the stages record (pipelines/orchestration/metrics.py); the real
scheduler test (tests/intraday/test_scheduler.py) receives them on a StatsD listener."""
from datetime import datetime, timezone

from lookalike.orchestration import metrics


def test_a_published_night_gives_its_rows_recall_drift_quarantine_and_embedding_gauges():
    record = {"rows": {"item_neighbors": 200, "catalog": 40},
              "neighbors": {"recall_at_k": 0.97, "mode": "incremental"},
              "drift": {"profile": {"coverage": 0.99, "score_quantiles": {"0.1": 0.5, "0.5": 0.7, "0.9": 0.9}},
                        "overlap": {"mean": 0.8}, "breaches": []},
              "extract": {"quarantined": {"listings of the window": 3, "events": 0},
                          "photos": {"fetched": 10, "reused": 30, "quarantined": 1}}}
    gauges = metrics.published(record, {"reused": 35, "computed": 5})
    assert gauges == {"rows.item_neighbors": 200.0, "rows.catalog": 40.0, "neighbors.recall_at_k": 0.97,
                      "neighbors.incremental": 1.0, "drift.coverage": 0.99, "drift.score_p10": 0.5,
                      "drift.score_p50": 0.7, "drift.score_p90": 0.9, "drift.neighbor_overlap": 0.8,
                      "drift.breaches": 0.0, "extract.quarantined.listings_of_the_window": 3.0,
                      "extract.quarantined.events": 0.0, "extract.photos_fetched": 10.0,
                      "extract.photos_reused": 30.0, "embed.reused": 35.0, "embed.computed": 5.0}
    assert metrics.published({}, None) == {}  # a record without those parts: nothing made up


def test_a_handoff_gives_each_stores_generation_and_its_age():
    now = datetime(2026, 11, 22, 10, 0, tzinfo=timezone.utc)
    night = {"sinks": {"postgres": {"generation": 7, "switched_at": "2026-11-22T09:00:00+00:00"},
                       "redis": {"error": "down"}}}
    assert metrics.served(night, "items", now) == {"serving.postgres.items.generation": 7.0,
                                                   "serving.postgres.items.age_seconds": 3600.0}
    hour = {"sinks": {"redis": {"generation": 3, "as_of": "2026-11-22T09:30:00"}}}
    assert metrics.served(hour, "items", now)["serving.redis.items.age_seconds"] == 1800.0
    assert metrics.hour({"skipped": "before the cutoff"}) == {}
