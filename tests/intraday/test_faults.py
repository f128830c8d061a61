"""An hour killed at any point changes nothing readable, in the warehouse or in either store, and the next
run converges; a source down for two hours is caught up by one hour, from the last finished hour's
watermark. Each kill is a SIGKILL of the real command line (``LOOKALIKE_FAULT``), as a lost worker."""
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.conftest import DS
from tests.intraday.conftest import HOUR, live_lists, store_lists

REPO = Path(__file__).resolve().parents[2]
SINKS = ("postgres", "redis")


def _intraday(config, as_of: str, step: str, fault: str | None = None, **environ) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    env.update(environ)
    if fault:
        env["LOOKALIKE_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "lookalike.tools.cli", "intraday", "--config", str(config),
                           "--as-of", as_of, "--step", step], env=env, capture_output=True, text=True, cwd=REPO,
                          timeout=600)


def _served(cfg, items) -> dict:
    return {sink: store_lists(cfg, sink, items) for sink in SINKS}


def test_an_hour_killed_anywhere_changes_nothing_readable_and_the_next_catches_up(served_night):
    cfg, changed, config = served_night
    night = live_lists(cfg)
    items = sorted(set(night) | changed["new"])
    stores = _served(cfg, items)
    assert stores["postgres"] == stores["redis"] == night

    for fault in ("intraday.before_lists", "intraday.before_marker"):  # the update, killed
        assert _intraday(config, HOUR, "update", fault).returncode == -9
        refused = _intraday(config, HOUR, "publish")
        assert refused.returncode != 0 and "no finished hour" in refused.stderr
        assert live_lists(cfg) == night
    assert _intraday(config, HOUR, "update").returncode == 0
    assert _intraday(config, HOUR, "publish", "intraday.before_publish").returncode == -9  # files up, no switch
    assert live_lists(cfg) == night
    assert _intraday(config, HOUR, "publish").returncode == 0
    hour = live_lists(cfg)
    assert hour != night and not changed["sold"] & set(hour)

    # the hand-off, killed inside PostgreSQL's transaction, then with Redis' MULTI queued and not executed
    assert _intraday(config, HOUR, "handoff", "intraday.postgres_mid_patch").returncode == -9
    assert _served(cfg, items) == {"postgres": night, "redis": night}
    assert _intraday(config, HOUR, "handoff", "intraday.redis_before_exec").returncode == -9
    assert _served(cfg, items) == {"postgres": hour, "redis": night}
    done = _intraday(config, HOUR, "handoff")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "already holds the hour" in json.loads(done.stdout)["handoff"]["sinks"]["postgres"]["note"]
    assert _served(cfg, items) == {"postgres": hour, "redis": hour}

    # the source down for two hours: 11:00 and 12:00 fail as transient; 13:00 applies all three hours
    db = Path(cfg.source.url.removeprefix("sqlite:///"))
    with sqlite3.connect(db) as con:
        sold = sorted(hour)[:2]
        for item, stamp in zip(sold, (f"{DS}T10:30:00", f"{DS}T11:45:00")):
            con.execute("update listings set status = 'sold', updated_at = ? where item_id = ?", (stamp, item))
    for as_of in (f"{DS}T11:00:00", f"{DS}T12:00:00"):
        down = _intraday(config, as_of, "all", LOOKALIKE_SOURCE__URL="postgresql+psycopg://x:y@127.0.0.1:9/none")
        assert down.returncode == 75, down.stderr[-2000:]  # transient: Airflow retries it
    caught = _intraday(config, f"{DS}T13:00:00", "all")
    assert caught.returncode == 0, caught.stderr[-3000:]
    result = json.loads(caught.stdout)
    assert result["update"]["watermark"] == HOUR and result["update"]["listings_read"] == 2
    for sink in SINKS:  # each store rewrote only what changed since the hour it held, not every list since the night
        patched = result["handoff"]["sinks"][sink]
        assert patched["since"] == HOUR and 0 < patched["lists"] < result["update"]["lists_changed"], patched
    after = live_lists(cfg)
    assert not set(sold) & set(after) and not any(set(sold) & set(n) for n in after.values())
    assert _served(cfg, items) == {"postgres": after, "redis": after}
