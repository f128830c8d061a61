"""What the stores promise an operator: a role that may only SELECT reads lists and status (the
layout is created by the first hand-off or `serving init`, never on connect); failures are filed by
SQLSTATE and by redis-py's exception class, never by message text, and anything else (a bug) keeps
its traceback; `serving status` shows the stores it can reach and marks the one it cannot."""
import json
import uuid
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg import errors as pg

from lookalike.config import load_config
from lookalike.errors import BAD_INPUT, BUG, TRANSIENT, ConfigError, TransientError, classify
from lookalike.online import handoff, postgres_store, redis_store
from lookalike.online.handoff import open_store
from lookalike.online.store import OnlineStore
from lookalike.storage import Warehouse
from lookalike.tools.cli import main as cli
from tests.online.nights import night_tables, publish_night

DS = "2026-11-01"


def _path(cfg) -> str:
    return str(Path(cfg.warehouse).parent / "lookalike.yaml")


@pytest.mark.parametrize("error, kind, says", [
    (pg.ConnectionFailure, TRANSIENT, "08006"),
    (pg.SerializationFailure, TRANSIENT, "40001"),
    (pg.DeadlockDetected, TRANSIENT, "40P01"),
    (pg.AdminShutdown, TRANSIENT, "57P01"),
    (pg.TooManyConnections, TRANSIENT, "53300"),
    (pg.InsufficientPrivilege, BAD_INPUT, "lacks a grant"),
    (pg.UndefinedTable, BAD_INPUT, "serving init"),
    (pg.InvalidSchemaName, BAD_INPUT, "serving init"),
    (pg.InvalidPassword, BAD_INPUT, "28P01"),
    (pg.InvalidTextRepresentation, BUG, None),
    (pg.SyntaxError, BUG, None),
])
def test_postgres_failures_are_filed_by_their_sqlstate(error, kind, says):
    # the message is another language's: only the code may decide
    mapped = postgres_store.failure(error("la connexion a été perdue"), "serving sink postgres")
    assert (classify(mapped) if mapped is not None else BUG) == kind
    if says:
        assert says in str(mapped)


@pytest.mark.parametrize("error, kind", [
    (redis.exceptions.ConnectionError, TRANSIENT),
    (redis.exceptions.TimeoutError, TRANSIENT),
    (redis.exceptions.ReadOnlyError, TRANSIENT),  # a replica promoted away from during a failover
    (redis.exceptions.BusyLoadingError, TRANSIENT),
    (redis.exceptions.TryAgainError, TRANSIENT),
    (redis.exceptions.ClusterDownError, TRANSIENT),
    (redis.exceptions.AuthenticationError, BAD_INPUT),
    (redis.exceptions.NoPermissionError, BAD_INPUT),
    (redis.exceptions.ResponseError, BUG),
    (redis.exceptions.DataError, BUG),
])
def test_redis_failures_are_filed_by_their_class(error, kind):
    mapped = redis_store.failure(error("something"), "serving sink redis")
    assert (classify(mapped) if mapped is not None else BUG) == kind


def test_a_server_that_ends_the_session_is_transient_and_a_bug_keeps_its_traceback(online, postgres_url):
    cfg = online()
    publish_night(Warehouse.of(cfg), DS, night_tables(DS, items=50, k=3, seed=1))
    handoff.run_handoff(cfg, DS)
    store = open_store(cfg, "postgres")
    pid = store.connect().info.backend_pid
    with psycopg.connect(postgres_url.replace("+psycopg", ""), autocommit=True) as admin:
        admin.execute("select pg_terminate_backend(%s)", (pid,))  # 57P01 admin_shutdown on that session
    with pytest.raises(TransientError):
        store.generations("items")
    store.close()

    # Something no store condition explains: a key of the layout holding the wrong type (WRONGTYPE), a
    # column of another type. Raised as it is, with its traceback, never filed as bad input.
    r = redis.Redis.from_url(cfg.serving.redis.url)
    r.delete(f"{cfg.serving.redis.prefix}:{{items}}:generations")
    r.set(f"{cfg.serving.redis.prefix}:{{items}}:generations", "not a sorted set")
    with psycopg.connect(postgres_url.replace("+psycopg", ""), autocommit=True) as admin:
        admin.execute(f"alter table {cfg.serving.postgres.schema}.generations alter column lists type text")
    for sink, error in (("redis", redis.exceptions.ResponseError), ("postgres", psycopg.errors.DatatypeMismatch)):
        sole = load_config(_path(cfg), environ={"LOOKALIKE_SERVING__SINKS": sink})
        with pytest.raises(error) as raised:
            handoff.run_handoff(sole, DS)
        assert classify(raised.value) == BUG and raised.value.__traceback__ is not None
        with pytest.raises(error):
            handoff.status(sole)


def test_a_select_only_role_reads_lists_and_status_and_cannot_write(online, postgres_url, capsys, monkeypatch):
    site = "site_" + uuid.uuid4().hex[:8]
    with psycopg.connect(postgres_url.replace("+psycopg", ""), autocommit=True) as admin:
        admin.execute(f"create role {site} login password 'site-password'")
    cfg = online(sinks="postgres")
    site_url = postgres_url.replace("lookalike:", f"{site}:").rsplit("@", 1)
    site_url = f"postgresql+psycopg://{site}:site-password@{site_url[1]}"
    as_site = {"LOOKALIKE_SERVING__POSTGRES__URL": site_url}

    # before any layout: a clear error naming `serving init`, and connecting created nothing
    assert cli(["serving", "status", "--config", _path(cfg)]) == 75
    assert "serving init" in capsys.readouterr().out
    with psycopg.connect(postgres_url.replace("+psycopg", "")) as admin:
        assert admin.execute("select 1 from pg_namespace where nspname = %s",
                             (cfg.serving.postgres.schema,)).fetchone() is None

    assert cli(["serving", "init", "--config", _path(cfg), "--grant", site]) == 0
    tables = night_tables(DS, items=50, k=3, seed=1)
    publish_night(Warehouse.of(cfg), DS, tables)
    handoff.run_handoff(cfg, DS)
    capsys.readouterr()

    for name, value in as_site.items():  # the commands below run as the site's role
        monkeypatch.setenv(name, value)
    assert cli(["similar", "item-000007", "--config", _path(cfg), "--format", "json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert len(found["neighbors"]) == 3 and found["sink"] == "postgres"
    assert cli(["serving", "status", "--config", _path(cfg), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["ds"] for r in rows if r["feed"] == "items"] == [DS] and "error" not in rows[0]
    reader = load_config(_path(cfg), environ=as_site)
    assert reader.serving.postgres.url.startswith(f"postgresql+psycopg://{site}:")
    with pytest.raises(ConfigError, match="lacks a grant"):
        handoff.rollback(reader)  # writing needs more than SELECT: a configuration error naming the grant


def test_status_shows_every_store_it_reaches_and_marks_the_one_it_cannot(online, capsys, monkeypatch):
    cfg = online()
    publish_night(Warehouse.of(cfg), DS, night_tables(DS, items=50, k=3, seed=1))
    handoff.run_handoff(cfg, DS)
    capsys.readouterr()
    down = {"LOOKALIKE_SERVING__REDIS__URL": "redis://127.0.0.1:1/0"}
    rows = handoff.status(load_config(_path(cfg), environ=down))
    assert {(r["sink"], r["feed"]): r["ds"] for r in rows if "error" not in r} == {("postgres", "items"): DS,
                                                                                   ("postgres", "users"): None}
    assert all("unreachable" in r["error"] for r in rows if r["sink"] == "redis")
    for name, value in down.items():
        monkeypatch.setenv(name, value)
    assert cli(["serving", "status", "--config", _path(cfg)]) == 75
    out = capsys.readouterr().out
    assert "UNREACHABLE" in out and "redis: could not be read" in out and DS in out
    assert json.loads(json.dumps(rows))  # what --format json prints


def test_both_stores_keep_the_store_contract(online):
    cfg = online()
    for sink in ("postgres", "redis"):
        assert isinstance(open_store(cfg, sink), OnlineStore), sink
