"""A real Airflow (`airflow standalone`: scheduler, dag-processor, triggerer, api-server with the
LocalExecutor, on loopback) runs lookalike_nightly for a ds triggered through the REST API, and
`airflow backfill create` over three days publishes each day once (PostgreSQL as Airflow's
metadata database); the server is stopped with SIGINT and no process may be left behind."""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psutil
import pytest

from pipelines.config import load_config
from pipelines.orchestrate import _airflow_bin, airflow_env
from pipelines.storage import Warehouse
from tests.conftest import DS, write_config

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Api:
    def __init__(self, base: str, server: subprocess.Popen, log: Path):
        self.base, self.server, self.log, self.token = base, server, log, None

    def call(self, method: str, path: str, body: dict | None = None):
        request = urllib.request.Request(self.base + path, method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Content-Type": "application/json",
                                                  **({"Authorization": f"Bearer {self.token}"} if self.token else {})})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def wait_for(self, what: str, check, timeout: float, every: float = 2.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise AssertionError(f"airflow standalone exited while waiting for {what}:\n"
                                     + self.log.read_text()[-4000:])
            try:
                value = check()
                if value:
                    return value
            except OSError:  # not up yet, or 404 until the DAG is parsed
                pass
            time.sleep(every)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _stage(config, stage, ds):
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", stage, "--config", str(config), "--ds", ds],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@contextlib.contextmanager
def running_airflow(cfg, config: Path, tmp_path: Path, unpause: tuple[str, ...], metadata_url: str | None = None):
    """`airflow standalone` on a loopback port for ``config``; yields an authenticated REST client.

    Every DAG is created paused but those in ``unpause``. ``metadata_url``: Airflow's metadata
    database (SQLite in the Airflow home without it). On exit: SIGINT, then every process the
    server started must be gone."""
    port = _free_port()
    env = {**airflow_env(cfg, str(config)),
           "AIRFLOW__CORE__EXECUTOR": "LocalExecutor", "AIRFLOW__CORE__PARALLELISM": "2",
           "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(port),
           "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
           "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
           "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
           "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
           # standalone starts its components as `airflow` from PATH: this environment's
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    if metadata_url:  # the CLI writes while the scheduler runs: SQLite would lock
        env |= {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": metadata_url}
    log_path = tmp_path / "standalone.log"
    log = open(log_path, "w")
    server = subprocess.Popen([_airflow_bin(), "standalone"], env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    api = Api(f"http://127.0.0.1:{port}", server, log_path)
    api.env = env
    try:
        api.wait_for("the api-server", lambda: api.call("GET", "/api/v2/monitor/health"), timeout=180)
        api.token = api.call("GET", "/auth/token")["access_token"]
        for dag_id in unpause:
            api.wait_for(f"{dag_id} to be parsed", lambda: api.call("GET", f"/api/v2/dags/{dag_id}"), timeout=180)
            api.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        yield api
    finally:
        group = [p for p in psutil.process_iter(["pid", "cmdline"]) if _session(p) == server.pid]
        server.send_signal(signal.SIGINT)  # standalone stops its components itself
        try:
            server.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            raise AssertionError("airflow standalone did not stop within 90 s of SIGINT")
        finally:
            log.close()
        _, alive = psutil.wait_procs(group, timeout=30)
        assert not alive, f"left running after SIGINT: {[p.info for p in alive]}"


def _finished(api: Api, path: str):
    state = api.call("GET", path)["state"]
    return state if state in ("success", "failed") else None


def test_a_real_scheduler_runs_the_nightly_dag_triggered_through_the_rest_api(tmp_path, sample_dir):
    config = write_config(tmp_path, sample_dir)
    cfg = load_config(config, environ={})
    for stage in ("extract", "train", "evaluate"):  # what lookalike_extract and lookalike_finetune leave for ds
        _stage(config, stage, DS)

    with running_airflow(cfg, config, tmp_path, unpause=("lookalike_nightly",)) as api:
        run = api.call("POST", "/api/v2/dags/lookalike_nightly/dagRuns", {"logical_date": None, "conf": {"ds": DS}})
        path = f"/api/v2/dags/lookalike_nightly/dagRuns/{run['dag_run_id']}"
        state = api.wait_for("the run to finish", lambda: _finished(api, path), timeout=600, every=5)
        assert state == "success", api.log.read_text()[-5000:]
        tasks = api.call("GET", f"{path}/taskInstances")["task_instances"]
        assert {t["task_id"]: t["state"] for t in tasks} == {
            "embed": "success", "neighbors": "success", "publish": "success", "report": "success"}
    assert DS in Warehouse.of(cfg).entries("item_neighbors")


def _airflow(api: Api, *args: str) -> str:
    proc = subprocess.run([_airflow_bin(), *args], env=api.env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"airflow {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _nightly_runs(api: Api) -> list[dict]:
    return api.call("GET", "/api/v2/dags/lookalike_nightly/dagRuns?limit=100")["dag_runs"]


def _all_finished(api: Api, days: list[str], count: int):
    runs = [run for run in _nightly_runs(api) if run["partition_key"] in days]
    failed = [run for run in runs if run["state"] == "failed"]
    assert not failed, f"nightly runs failed: {failed}\n" + api.log.read_text()[-5000:]
    done = [run for run in runs if run["state"] == "success"]
    return done if len(done) >= count else None


def _new_database(server_url: str, name: str) -> str:
    import sqlalchemy as sa

    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return server_url.rsplit("/", 1)[0] + "/" + name


def test_a_backfill_publishes_each_day_once_and_a_rerun_replaces_only_its_day(tmp_path, sample_dir, postgres_url):
    # The three days that end yesterday: the scheduler of an unpaused lookalike_extract adds no
    # run of its own next to the backfill before midnight (a backfill of a paused DAG never runs).
    today = datetime.now(timezone.utc).date()
    days = [(today - timedelta(days=n)).isoformat() for n in (3, 2, 1)]
    # The sample ends on DS; a window this long keeps its listings in any later day's snapshot.
    config = write_config(tmp_path, sample_dir, window_days=3650)
    cfg = load_config(config, environ={})
    for stage in ("extract", "train", "evaluate"):  # a production model for the nightly runs
        _stage(config, stage, DS)
    wh = Warehouse.of(cfg)
    metadata = _new_database(postgres_url, "airflow_backfill")

    with running_airflow(cfg, config, tmp_path, unpause=("lookalike_extract", "lookalike_nightly"),
                         metadata_url=metadata) as api:
        _airflow(api, "backfill", "create", "--dag-id", "lookalike_extract", "--from-date", days[0],
                 "--to-date", days[-1])
        runs = api.wait_for("three nightly runs", lambda: _all_finished(api, days, 3), timeout=900, every=5)
        assert sorted(run["partition_key"] for run in runs) == days  # one run per day
        first = {table: dict(wh.entries(table)) for table in ("item_neighbors", "catalog")}
        for table, entries in first.items():
            assert set(days) <= set(entries), table

        # Redo one day: its extract and its nightly run again; only its partition changes.
        _airflow(api, "backfill", "create", "--dag-id", "lookalike_extract", "--from-date", days[1],
                 "--to-date", days[1], "--reprocess-behavior", "completed")
        runs = api.wait_for("the rerun", lambda: _all_finished(api, days, 4), timeout=600, every=5)
        assert sorted(run["partition_key"] for run in runs) == sorted([*days, days[1]])

    for table, entries in first.items():
        now = wh.entries(table)
        assert now[days[1]]["run_id"] != entries[days[1]]["run_id"], f"{table}: the rerun did not replace {days[1]}"
        for day in (days[0], days[2]):
            assert now[day] == entries[day], f"{table}: the rerun of {days[1]} touched {day}"
        assert [path for path in wh.partition_files(table, days[1]) if entries[days[1]]["run_id"] in path] == []


def _session(process) -> int | None:
    try:
        return os.getsid(process.pid)
    except (ProcessLookupError, PermissionError):
        return None
