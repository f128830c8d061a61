"""What every online store offers the hand-off (``pipelines/online/handoff.py``, where a store is
chosen from the config: ``open_store(cfg, name)``).

A store keeps *generations*: each is one published run of a feed (``items``: item_neighbors and
the experiment arms, from lookalike_nightly; ``users``: user_recommendations, from
lookalike_user_recs), written completely and checked while invisible, then made live in one atomic
step; the site reads the live one (docs/serving.md). Between nights, each intraday hour rewrites the lists
it changed inside the live generation, in one transaction (``patch``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


WRITING, READY, LIVE, RETIRED = "writing", "ready", "live", "retired"


@dataclass(frozen=True)
class Generation:
    number: int
    feed: str
    ds: str
    run_id: str
    state: str  # writing (or its writer died), ready (checked, not yet switched), live, retired (was live)
    lists: dict  # table → lists written
    created_at: str | None = None
    switched_at: str | None = None
    as_of: str | None = None  # the newest intraday hour applied to it (``patch``), None: the night as published

    def to_dict(self) -> dict:
        return asdict(self)


def required_url(sink: str, url: str, conn_id: str, example: str) -> str:
    """``url``, or a clear error naming the sink and the two places its URL may come from."""
    if not url:
        from lookalike.errors import ConfigError

        raise ConfigError(f"serving sink {sink}: no URL; set serving.{sink}.url ({example}) or define the "
                          f"Airflow Connection {conn_id!r}")
    return url
