"""A night the drift gate refuses waits for an operator, on a real scheduler (`airflow standalone`): the
approve_drift task awaits input; answered through the REST API, Approve publishes the night with the drift
accepted and the approver in the run record, and Reject fails the run without a retry, nothing of that night
published and the previous one still served."""
import shutil
import sqlite3
import time
from datetime import date, timedelta

import pytest

from lookalike.config import load_config
from lookalike.embed.stage import run_embed
from lookalike.extract.stage import run_extract
from lookalike.neighbors.stage import run_neighbors
from lookalike.publish.stage import run_publish
from lookalike.storage import Warehouse
from tests.conftest import DS, write_config
from tests.test_scheduler import Api, _finished, running_airflow

NEXT = (date.fromisoformat(DS) + timedelta(days=1)).isoformat()
AFTER = (date.fromisoformat(DS) + timedelta(days=2)).isoformat()


def _grow(db, day: str, count: int) -> None:
    """``count`` more on-sale listings (reposts of existing photos) created on ``day``: the catalogue grows."""
    with sqlite3.connect(db) as con:
        rows = con.execute("select item_id, title, description, category, brand, price, seller_id, image_key "
                           "from listings where status = 'on_sale' and image_key is not null order by item_id "
                           "limit ?", (count,)).fetchall()
        stamp = f"{day}T08:00:00"
        con.executemany("insert into listings values (?, ?, ?, ?, ?, ?, 'on_sale', ?, ?, ?, ?)",
                        [(f"grow-{day}-{i}", *row[1:6], f"g{i}", row[7], stamp, stamp) for i, row in enumerate(rows)])


def _awaiting(api: Api, run: str):
    task = api.call("GET", f"{run}/taskInstances/approve_drift")
    return task if task["state"] in ("deferred", "awaiting_input") else None


PAUSE_SETTLES_S = 10


def _answer(api: Api, run: str, option: str) -> None:
    """Answer approve_drift as an operator does: not within a second of its pause. An answer that came
    before the executor had reported the pausing process's exit made the scheduler fail the resumed task
    ("finished with state success, but the task instance's state attribute is queued", Airflow 3.3's
    LocalExecutor), so the answer waits until the pause has settled."""
    time.sleep(PAUSE_SETTLES_S)
    api.call("PATCH", f"{run}/taskInstances/approve_drift/-1/hitlDetails", {"chosen_options": [option]})


def _night(api: Api, ds: str) -> str:
    run = api.call("POST", "/api/v2/dags/lookalike_nightly/dagRuns", {"logical_date": None, "conf": {"ds": ds}})
    return f"/api/v2/dags/lookalike_nightly/dagRuns/{run['dag_run_id']}"


@pytest.mark.slow  # about two minutes
def test_a_refused_night_waits_for_an_operator_who_approves_once_and_rejects_once(tmp_path, sample_dir):
    sample = tmp_path / "sample"
    shutil.copytree(sample_dir, sample)
    config = write_config(tmp_path, sample, publish={"max_rows_change": 0.01})  # any growth breaches
    cfg = load_config(config, environ={})
    wh = Warehouse.of(cfg)
    for stage in (run_extract, run_embed, run_neighbors, run_publish):  # the night served
        stage(cfg, DS)
    for day in (NEXT, AFTER):  # each next night's catalogue grows by a fifth
        _grow(sample / "marketplace.db", (date.fromisoformat(day) - timedelta(days=1)).isoformat(), 60)
    with running_airflow(cfg, config, tmp_path, unpause=("lookalike_nightly",)) as api:
        run_extract(cfg, NEXT)
        run = _night(api, NEXT)
        waiting = api.wait_for("approve_drift to await input", lambda: _awaiting(api, run), timeout=600, every=3)
        assert waiting["task_id"] == "approve_drift"
        detail = api.call("GET", f"{run}/taskInstances/approve_drift/-1/hitlDetails")
        assert "rows" in detail["body"] and "publish_staging" in detail["body"]  # the bounds and their figures
        assert NEXT not in wh.entries("item_neighbors")  # nothing published while it waits
        _answer(api, run, "Approve")
        assert api.wait_for("the approved night", lambda: _finished(api, run), timeout=600, every=3) == "success"
        tasks = {t["task_id"]: t["state"] for t in api.call("GET", f"{run}/taskInstances")["task_instances"]}
        assert tasks["publish"] == "skipped" and tasks["publish_accepted"] == "success"
        assert tasks["handoff"] == tasks["report"] == "success"
        drift = wh.run_record(NEXT)["drift"]
        assert drift["breaches"] and drift["accept_drift"] and drift["approval"]["by"]

        run_extract(cfg, AFTER)
        run = _night(api, AFTER)
        api.wait_for("approve_drift to await input", lambda: _awaiting(api, run), timeout=600, every=3)
        _answer(api, run, "Reject")
        assert api.wait_for("the rejected night", lambda: _finished(api, run), timeout=600, every=3) == "failed"
        tasks = {t["task_id"]: (t["state"], t["try_number"]) for t in
                 api.call("GET", f"{run}/taskInstances")["task_instances"]}
        assert tasks["approve_drift"] == ("failed", 1)  # refused, not an error to retry
        assert tasks["publish_accepted"][0] == tasks["handoff"][0] == "upstream_failed"
    assert sorted(wh.entries("item_neighbors")) == [DS, NEXT]  # the rejected night published nothing
