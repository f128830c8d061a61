"""Who sees which arm of an experiment: a salted hash of the user id, the same in Python and SQL.

A user's bucket is the first 8 hex digits of ``md5(salt || ':' || user_id)`` read as an integer,
modulo 10,000. The arms of an experiment split the buckets in their configured order by share:
with shares 0.5/0.5 the first arm has buckets [0, 5000), the second [5000, 10000). The salt is
the experiment's name unless ``experiments.<name>.salt`` says otherwise, so two experiments split
the same users independently, and a new salt reshuffles them. ``experiment_variants`` publishes
each arm's bucket range every night it runs; the serving side applies :data:`BUCKET_SQL` (or the
DuckDB macro ``lookalike_variant``, ``sql/views/experiments.sql``) and never needs this module.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from lookalike.config import Config

BUCKETS = 10_000

# The bucket of user_id under salt, per engine (the same integer as bucket()).
BUCKET_SQL = {
    "duckdb": "(('0x' || substr(md5(salt || ':' || user_id), 1, 8))::UBIGINT % 10000)::INTEGER",
    "spark": "cast(pmod(cast(conv(substr(md5(concat(salt, ':', user_id)), 1, 8), 16, 10) as bigint), 10000) as int)",
    "trino": "cast(from_base(substr(lower(to_hex(md5(to_utf8(salt || ':' || user_id)))), 1, 8), 16) % 10000 as integer)",
}


def bucket(salt: str, user_id: str) -> int:
    return int(hashlib.md5(f"{salt}:{user_id}".encode()).hexdigest()[:8], 16) % BUCKETS


@dataclass(frozen=True)
class Arm:
    variant: str
    serve: str  # production | candidate | image_baseline | a model version
    share: float
    low: int  # buckets [low, high)
    high: int
    is_control: bool


@dataclass(frozen=True)
class Experiment:
    name: str
    salt: str
    arms: tuple[Arm, ...]
    start: str  # "" = open
    end: str

    @property
    def control(self) -> Arm:
        return next(arm for arm in self.arms if arm.is_control)

    def running(self, ds: str) -> bool:
        return (not self.start or self.start <= ds) and (not self.end or ds <= self.end)

    def variant_of(self, user_id: str) -> str:
        b = bucket(self.salt, user_id)
        return next(arm.variant for arm in self.arms if arm.low <= b < arm.high)

    def shares(self) -> dict[str, float]:
        return {arm.variant: (arm.high - arm.low) / BUCKETS for arm in self.arms}


def experiment(cfg: Config, name: str) -> Experiment:
    """The configured experiment ``name``, its arms' bucket ranges laid out by share."""
    from lookalike.errors import ConfigError

    if name not in cfg.experiments:
        raise ConfigError(f"no experiment {name!r} in the config (experiments: "
                          f"{', '.join(cfg.experiments) or 'none configured'})")
    exp = cfg.experiments[name]
    control = exp.control or next(iter(exp.variants))
    arms, low, total = [], 0, 0.0
    for i, (variant, arm) in enumerate(exp.variants.items()):
        total += arm.share
        high = BUCKETS if i == len(exp.variants) - 1 else round(total * BUCKETS)
        arms.append(Arm(variant, arm.serve, arm.share, low, high, variant == control))
        low = high
    return Experiment(name, exp.salt or name, tuple(arms), exp.start, exp.end)


def running(cfg: Config, ds: str) -> list[Experiment]:
    """The experiments that run on ``ds``, in config order."""
    return [e for e in (experiment(cfg, name) for name in cfg.experiments) if e.running(ds)]
