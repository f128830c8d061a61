"""Assignment: one hash in Python, DuckDB and Spark SQL; arms get their shares; salts split independently."""
import numpy as np
import pytest

from lookalike.config import load_config
from lookalike.errors import ConfigError
from lookalike.assignment import BUCKET_SQL, BUCKETS, bucket, experiment, running
from tests.conftest import write_config

USERS = [f"u{i:05d}" for i in range(5000)] + ["", "ユーザー", "o'brien", "x" * 300]


def _cfg(tmp_path, sample_dir, **experiments):
    return load_config(write_config(tmp_path, sample_dir, experiments=experiments), environ={})


def test_python_and_duckdb_give_every_user_the_same_bucket():
    import duckdb

    con = duckdb.connect()
    con.execute("create table users (user_id varchar, salt varchar)")
    con.executemany("insert into users values (?, ?)", [(u, s) for u in USERS for s in ("look", "other-salt")])
    rows = con.execute(f"select user_id, salt, {BUCKET_SQL['duckdb']} from users").fetchall()
    assert all(b == bucket(s, u) for u, s, b in rows)
    assert {b for _, _, b in rows} <= set(range(BUCKETS))


def test_spark_sql_gives_every_user_the_same_bucket(cfg):
    from lookalike.spark import spark_session

    spark = spark_session(cfg)
    frame = spark.createDataFrame([(u, "look") for u in USERS], "user_id string, salt string")
    rows = frame.selectExpr("user_id", f"{BUCKET_SQL['spark']} as b").collect()
    assert all(r.b == bucket("look", r.user_id) for r in rows)


def test_the_published_macro_assigns_as_python(tmp_path, sample_dir):
    from lookalike.query import connect
    from lookalike.storage import Warehouse

    con = connect(Warehouse.at(tmp_path / "wh"))
    assert [con.execute("select lookalike_bucket(?, ?)", ["look", u]).fetchone()[0] for u in USERS[:200]] == \
        [bucket("look", u) for u in USERS[:200]]


def test_arms_get_their_shares_and_salts_split_users_independently(tmp_path, sample_dir):
    arms = {"a": {"serve": "production", "share": 0.2}, "b": {"serve": "candidate", "share": 0.3},
            "c": {"serve": "image_baseline", "share": 0.5}}
    cfg = _cfg(tmp_path, sample_dir, one={"variants": arms}, two={"variants": arms, "start": "2026-12-01",
                                                                   "end": "2026-12-14"})
    one, two = experiment(cfg, "one"), experiment(cfg, "two")
    assert [(a.low, a.high) for a in one.arms] == [(0, 2000), (2000, 5000), (5000, 10000)]
    assert one.control.variant == "a"
    users = USERS[:5000]
    seen = np.array([one.variant_of(u) for u in users])
    for arm, share in (("a", 0.2), ("b", 0.3), ("c", 0.5)):
        assert abs((seen == arm).mean() - share) < 0.025
    other = np.array([two.variant_of(u) for u in users])
    assert abs(((seen == "a") & (other == "a")).mean() - 0.04) < 0.01  # independent: 0.2 x 0.2
    assert [e.name for e in running(cfg, "2026-11-30")] == ["one"]
    assert [e.name for e in running(cfg, "2026-12-14")] == ["one", "two"]


@pytest.mark.parametrize("bad, message", [
    ({"variants": {"a": {"share": 0.5}}}, "two or more variants"),
    ({"variants": {"a": {"share": 0.5}, "b": {"share": 0.4}}}, "sum to 0.9"),
    ({"variants": {"a": {"share": 0.5}, "b": {"share": 0.5}}, "control": "c"}, "not one of its variants"),
    ({"variants": {"a": {"share": 0.5}, "b": {"share": 0.5}}, "start": "2026-12-10", "end": "2026-12-01"},
     "ends"),
    ({"variants": {"a": {"share": 1.0}, "b": {"share": 0.0}}}, "must lie in"),
])
def test_a_broken_experiment_is_refused_at_load(tmp_path, sample_dir, bad, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(tmp_path, sample_dir, broken=bad)
