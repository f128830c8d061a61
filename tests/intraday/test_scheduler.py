"""lookalike_intraday on a real scheduler (`airflow standalone`, LocalExecutor), with real PostgreSQL and
Redis stores: after a night, listings are added, changed and sold, and one triggered hour serves them in
the warehouse's view and in both stores. Then an hour races the next night in the worst order: it reads the
old night, is held while lookalike_nightly publishes and hands off the new one, and finishes after it. It
publishes nothing (stale), nothing is published twice, and the next hour, on the new night, serves every
change: the lists equal a full rebuild of the source as it is then."""
import json
import shutil
import sqlite3
import time
import uuid
from datetime import date, timedelta

import pyarrow.parquet as pq
import pytest

from lookalike.config import load_config
from lookalike.embed.stage import run_embed
from lookalike.extract.stage import run_extract
from lookalike.intraday.stage import TABLE
from lookalike.neighbors.stage import run_neighbors
from lookalike.online.handoff import run_handoff
from lookalike.publish.stage import run_publish
from lookalike.storage import Warehouse
from tests.conftest import DS, write_config
from tests.intraday.conftest import K, NEXT, change_the_source, live_lists, store_lists
from tests.test_scheduler import Api, _finished, _trigger_and_wait, running_airflow

AFTER = (date.fromisoformat(NEXT) + timedelta(days=1)).isoformat()


class StatsdListener:
    """A StatsD server on a loopback UDP port: every gauge it receives, by name."""

    def __enter__(self):
        import socket
        import threading

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.gauges: dict[str, list[float]] = {}
        self.airflow_env = {"AIRFLOW__METRICS__STATSD_ON": "True", "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
                            "AIRFLOW__METRICS__STATSD_PORT": str(self.sock.getsockname()[1])}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()
        return self

    def _listen(self):
        while not self.stop.is_set():
            try:
                data = self.sock.recv(65536).decode(errors="replace")
            except OSError:
                continue
            for line in data.splitlines():
                name, _, rest = line.partition(":")
                value, _, kind = rest.partition("|")
                if kind.startswith("g"):
                    self.gauges.setdefault(name, []).append(float(value))

    def wait_for(self, names: list[str], timeout: float = 60) -> dict[str, list[float]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(n in self.gauges for n in names):
            time.sleep(0.5)
        missing = [n for n in names if n not in self.gauges]
        assert not missing, (missing, sorted(n for n in self.gauges if "lookalike" in n))
        return dict(self.gauges)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.sock.close()


def _trigger(api: Api, as_of: str) -> str:
    run = api.call("POST", "/api/v2/dags/lookalike_intraday/dagRuns", {"logical_date": None,
                                                                       "conf": {"as_of": as_of}})
    return f"/api/v2/dags/lookalike_intraday/dagRuns/{run['dag_run_id']}"


def _wait(api: Api, path: str) -> dict[str, str]:
    state = api.wait_for("lookalike_intraday to finish", lambda: _finished(api, path), timeout=600, every=3)
    assert state == "success", api.log.read_text()[-5000:]
    return {t["task_id"]: t["state"] for t in api.call("GET", f"{path}/taskInstances")["task_instances"]}


def _sell(db, items, stamp: str) -> None:
    with sqlite3.connect(db) as con:
        for item in items:
            con.execute("update listings set status = 'sold', updated_at = ? where item_id = ?", (stamp, item))


def _everywhere(cfg, items) -> dict:
    live = live_lists(cfg)
    return {"view": live, **{sink: store_lists(cfg, sink, sorted(set(live) | set(items))) for sink in ("postgres",
                                                                                                       "redis")}}


@pytest.mark.slow  # about a minute
def test_an_hour_serves_fresh_lists_and_an_hour_racing_the_next_night_loses_nothing(
        tmp_path, sample_dir, postgres_url, redis_url):
    sample = tmp_path / "sample"
    shutil.copytree(sample_dir, sample)
    name = "t" + uuid.uuid4().hex[:10]
    config = write_config(tmp_path, sample, neighbors={"k": K, "exclude_same_seller": True, "margin": 4},
                          serving={"sinks": "postgres,redis", "postgres": {"url": postgres_url, "schema": name},
                                   "redis": {"url": redis_url, "prefix": name}},
                          intraday={"schedule": ""})  # only the runs this test triggers
    cfg = load_config(config, environ={})
    wh = Warehouse.of(cfg)
    db = sample / "marketplace.db"
    for stage in (run_extract, run_embed, run_neighbors, run_publish, run_handoff):  # the night DS
        stage(cfg, DS)
    changed = change_the_source(db, f"{DS}T09:30:00")
    release = tmp_path / "release-the-hour"
    release.touch()
    held = {"LOOKALIKE_HOLD": f"intraday.before_marker:{release}"}
    with StatsdListener() as statsd, running_airflow(
            cfg, config, tmp_path, unpause=("lookalike_intraday", "lookalike_nightly"),
            extra_env={**held, **statsd.airflow_env}) as api:
        # One hour after the night: new listings listed with k neighbours, sold ones gone, everywhere
        assert _wait(api, _trigger(api, f"{DS}T10:00:00")) == {"update": "success", "publish": "success",
                                                               "handoff": "success"}
        served = _everywhere(cfg, changed["new"] | changed["sold"])
        assert served["postgres"] == served["redis"] == served["view"]
        assert all(len(served["view"][item]) == K for item in changed["new"])
        assert not any(changed["sold"] & ({item} | set(lists)) for item, lists in served["view"].items())

        # The race: an hour reads the night DS and is held; the night NEXT publishes and hands off meanwhile
        release.unlink()
        sold_in_race = sorted(served["view"])[:2]
        _sell(db, sold_in_race, f"{DS}T10:30:00")
        run_extract(cfg, NEXT)  # lookalike_extract's part of the next night
        hour = _trigger(api, f"{DS}T11:00:00")
        lists = wh.work(DS, "intraday") / "2026-11-21T110000" / TABLE / "part-0.parquet"
        api.wait_for("the hour to be held after its lists", lists.exists, timeout=300, every=1)
        night = _trigger_and_wait(api, "lookalike_nightly", NEXT)
        assert night["publish"] == night["handoff"] == "success"
        release.touch()
        _wait(api, hour)

        published = wh.manifest()["tables"]
        assert sorted(published["item_neighbors"]) == [DS, NEXT]  # each night once
        assert wh.run_record(NEXT)["run_id"] == published["item_neighbors"][NEXT]["run_id"]
        assert {ds: e["as_of"] for ds, e in published[TABLE].items()} == {DS: f"{DS}T10:00:00"}  # stale: nothing
        record = json.loads((lists.parents[1] / "hour.json").read_text())
        assert record["night"] == DS  # it did build on the old night

        # After the night: more sold at 00:30; the next hour, on the new night, serves every change
        later_sold = sorted(set(live_lists(cfg)) - set(sold_in_race))[:1]
        _sell(db, later_sold, f"{NEXT}T00:30:00")
        assert _wait(api, _trigger(api, f"{NEXT}T01:00:00"))["handoff"] == "success"
        assert {ds: e["as_of"] for ds, e in wh.entries(TABLE).items()}[NEXT] == f"{NEXT}T01:00:00"
        # Lookalike's gauges, through Airflow's StatsD settings: the night's, the hand-offs', the hours'
        gauges = statsd.wait_for(["airflow.lookalike.rows.item_neighbors", "airflow.lookalike.neighbors.recall_at_k",
                                  "airflow.lookalike.embed.computed", "airflow.lookalike.drift.coverage",
                                  "airflow.lookalike.serving.postgres.items.age_seconds",
                                  "airflow.lookalike.serving.redis.items.generation",
                                  "airflow.lookalike.intraday.lists_changed"])
        night_rows = wh.entries("item_neighbors")[NEXT]["rows"]
        assert night_rows in gauges["airflow.lookalike.rows.item_neighbors"]

    gone = changed["sold"] | set(sold_in_race) | set(later_sold)
    final = _everywhere(cfg, changed["new"] | gone)
    assert final["postgres"] == final["redis"] == final["view"]
    assert not any(gone & ({item} | set(lists)) for item, lists in final["view"].items())
    assert all(len(final["view"][item]) == K for item in changed["new"])
    for stage in (run_extract, run_embed):  # the source as it is now, searched in full
        stage(cfg, AFTER)
    run_neighbors(cfg, AFTER, full=True)
    rebuilt = pq.read_table(wh.work(AFTER, "item_neighbors")).sort_by([("item_id", "ascending"),
                                                                       ("rank", "ascending")])
    expected: dict[str, list[str]] = {}
    for item, neighbor in zip(rebuilt.column("item_id").to_pylist(), rebuilt.column("neighbor_id").to_pylist()):
        expected.setdefault(item, []).append(neighbor)
    assert final["view"] == expected
