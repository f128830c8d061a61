"""A real Airflow (`airflow standalone`: scheduler, dag-processor, triggerer, api-server with the
LocalExecutor, on loopback) runs lookalike_nightly for a ds triggered through the REST API, and
a week of nights backfilled with a killed extract and an unreachable source publishes each day
once (PostgreSQL as Airflow's metadata database); the server is stopped with SIGINT and no process may be left behind."""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psutil
import pytest

from lookalike.config import load_config
from lookalike.orchestration.orchestrate import _airflow_bin, airflow_env, prepare_airflow
from lookalike.query import run_query
from lookalike.publish.report import build_report
from lookalike.sample.load import load_database
from lookalike.storage import Warehouse
from lookalike.tools.summary import run_summary
from tests.conftest import DS, reset_moto, rest_call, write_config
from tests.faultproxy import TcpGate

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
        return rest_call(self.base, method, path, body, self.token)

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
    proc = subprocess.run([sys.executable, "-m", "lookalike.tools.cli", stage, "--config", str(config), "--ds", ds],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@contextlib.contextmanager
def running_airflow(cfg, config: Path, tmp_path: Path, unpause: tuple[str, ...], metadata_url: str | None = None,
                    extra_env: dict | None = None):
    """`airflow standalone` on a loopback port for ``config``; yields an authenticated REST client.

    Every DAG is created paused but those in ``unpause``. ``metadata_url``: Airflow's metadata
    database (SQLite in the Airflow home without it). ``extra_env``: more variables (connections);
    with it, the server gets no ``AWS_*`` variable of this process. On exit: SIGINT, then every
    process the server started must be gone."""
    port = _free_port()
    inherited = airflow_env(cfg, str(config))
    if extra_env is not None:
        inherited = {k: v for k, v in inherited.items() if not k.startswith("AWS_")} | extra_env
    env = {**inherited,
           "AIRFLOW__CORE__EXECUTOR": "LocalExecutor", "AIRFLOW__CORE__PARALLELISM": "2",
           "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(port),
           "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
           "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
           "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
           "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
           "PYTHONUNBUFFERED": "1",  # the log shows the shutdown as it happens
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
            # standalone's shutdown joins its components without a timeout and never escalates
            # (apache/airflow#72464); a supervisor would send SIGTERM next, and so does this test.
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                raise AssertionError("airflow standalone stopped neither on SIGINT nor on SIGTERM") from None
        finally:
            log.close()
        _, alive = psutil.wait_procs(group, timeout=30)
        assert not alive, f"left running after the stop: {[p.info for p in alive]}"


def _finished(api: Api, path: str):
    state = api.call("GET", path)["state"]
    return state if state in ("success", "failed") else None


def _trigger_and_wait(api: Api, dag_id: str, ds: str, timeout: float = 600) -> dict[str, str]:
    run = api.call("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": {"ds": ds}})
    path = f"/api/v2/dags/{dag_id}/dagRuns/{run['dag_run_id']}"
    state = api.wait_for(f"{dag_id} to finish", lambda: _finished(api, path), timeout=timeout, every=5)
    assert state == "success", api.log.read_text()[-5000:]
    return {t["task_id"]: t["state"] for t in api.call("GET", f"{path}/taskInstances")["task_instances"]}


def test_a_real_scheduler_reads_source_and_store_through_connections_and_mails_a_missed_deadline(
        tmp_path, postgres_url, smtp_server):
    """Triggered through the REST API: lookalike_extract reads the listings through the
    ``lookalike_source`` connection (the config's source.url names no database) and the photos
    through ``aws_default`` (the scheduler has no AWS_* variable); lookalike_nightly publishes to
    S3 through it, and its DeadlineAlert mails the operators when it is late."""
    import boto3
    import sqlalchemy as sa
    from moto.server import ThreadedMotoServer

    from lookalike.orchestration.alerts import LATE_SUBJECT

    inbox, smtp_connection = smtp_server
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    moto.start()
    host, port = moto.get_host_and_port()
    reset_moto(host, port)
    aws = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "lookalike-key",
           "AWS_SECRET_ACCESS_KEY": "lookalike-secret", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        s3 = boto3.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL"], aws_access_key_id="x", aws_secret_access_key="x",
                          region_name="us-east-1")
        for bucket in ("images", "lake"):
            s3.create_bucket(Bucket=bucket)
        database = _new_database(postgres_url, "listings_conn")
        seeded = subprocess.run([sys.executable, "-m", "lookalike.tools.cli", "sample-data", "--out", str(tmp_path / "sample"),
                                 "--items", "300", "--users", "100", "--days", "100", "--seed", "3", "--end", DS,
                                 "--load-into", database, "--upload-images", "s3://images/sample"],
                                capture_output=True, text=True, cwd=REPO, env={**os.environ, **aws}, timeout=600)
        assert seeded.returncode == 0, seeded.stderr[-2000:]
        config = write_config(tmp_path, tmp_path / "sample", warehouse="s3://lake/warehouse",
                              work_dir=str(tmp_path / "work"),
                              source={"url": f"sqlite:///{tmp_path / 'no-such.db'}", "images": "s3://images/sample"},
                              alerts={"notifier": "smtp", "to": "night-ops@example.com",
                                      "publish_deadline_minutes": 0.02})
        cfg = load_config(config, environ={})
        url = sa.engine.make_url(database)
        connections = {
            "AIRFLOW_CONN_LOOKALIKE_SOURCE": f"postgres://{url.username}:{url.password}@{url.host}:{url.port}/{url.database}",
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps({"conn_type": "aws", "login": aws["AWS_ACCESS_KEY_ID"],
                                                    "password": aws["AWS_SECRET_ACCESS_KEY"],
                                                    "extra": {"endpoint_url": aws["AWS_ENDPOINT_URL"],
                                                              "region_name": "us-east-1"}}),
            "AIRFLOW_CONN_SMTP_DEFAULT": smtp_connection,
        }
        with running_airflow(cfg, config, tmp_path, unpause=("lookalike_extract", "lookalike_nightly"),
                             extra_env=connections) as api:
            assert _trigger_and_wait(api, "lookalike_extract", DS) == {"extract": "success"}
            for stage in ("train", "evaluate"):  # what lookalike_finetune leaves for ds (config and AWS_* here)
                proc = subprocess.run([sys.executable, "-m", "lookalike.tools.cli", stage, "--config", str(config), "--ds", DS],
                                      capture_output=True, text=True, cwd=REPO, env={**os.environ, **aws}, timeout=600)
                assert proc.returncode == 0, proc.stderr[-3000:]
            assert _trigger_and_wait(api, "lookalike_nightly", DS) == {
                "embed": "success", "neighbors": "success", "experiments": "success", "publish": "success",
                "approve_drift": "skipped", "publish_accepted": "skipped",  # the drift gate passed: nothing to approve
                "handoff": "success", "report": "success"}  # handoff: no online store configured, nothing to do
            late = inbox.wait_for(lambda to, m: m["Subject"] == LATE_SUBJECT, timeout=180)
            assert "night-ops@example.com" in late["To"]
            logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "airflow" / "logs").rglob("*.log"))
        assert "source: Airflow connection 'lookalike_source'" in logs
        assert "object store: Airflow connection 'aws_default'" in logs
        assert url.password not in logs and aws["AWS_SECRET_ACCESS_KEY"] not in logs
        with _patched_environ(aws):
            assert DS in Warehouse.of(cfg).entries("item_neighbors")
    finally:
        moto.stop()


@contextlib.contextmanager
def _patched_environ(values: dict):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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


@pytest.mark.week  # `make week-test`: about 6 minutes, run by .ci/run after `make test`
def test_a_week_of_nights_with_a_killed_extract_and_an_unreachable_source_publishes_each_day_once(
        tmp_path, sample_dir, postgres_url):
    """Seven days backfilled on a real scheduler, fine-tuned on the first day only; one extract is
    SIGKILLed mid-write and the listings database refuses every connection for a while; Airflow
    retries both. Every day publishes once, and every day's summary, report and the analytics
    queries work; then one day is redone and only its partition changes."""
    # The days that end yesterday: the scheduler of an unpaused lookalike_extract adds no run of
    # its own next to the backfill before midnight (a backfill of a paused DAG never runs).
    today = datetime.now(timezone.utc).date()
    days = [(today - timedelta(days=n)).isoformat() for n in range(7, 0, -1)]
    source = _new_database(postgres_url, "week_source")
    load_database(sample_dir, source)
    port = int(source.rsplit(":", 1)[1].split("/")[0])
    with TcpGate(port) as gate:
        through_gate = source.replace(f":{port}/", f":{gate.port}/")
        # The sample ends on DS; a window this long keeps its listings in any later day's snapshot.
        config = write_config(tmp_path, sample_dir, window_days=3650,
                              source={"url": through_gate, "images": str(sample_dir / "images")})
        cfg = load_config(config, environ={})
        for stage in ("extract", "train", "evaluate"):  # the week's only fine-tune: on its first day
            _stage(config, stage, days[0])
        wh = Warehouse.of(cfg)
        metadata = _new_database(postgres_url, "airflow_backfill")
        marker = tmp_path / "extract-killed"
        faults = {"LOOKALIKE_FAULT": "extract.mid_write", "LOOKALIKE_FAULT_ONCE": str(marker)}

        with running_airflow(cfg, config, tmp_path, unpause=("lookalike_extract", "lookalike_nightly"),
                             metadata_url=metadata, extra_env=faults) as api:
            gate.close_for(20)  # the first extracts find the database unreachable: transient, retried
            _airflow(api, "backfill", "create", "--dag-id", "lookalike_extract", "--from-date", days[0],
                     "--to-date", days[-1])
            runs = api.wait_for("seven nightly runs", lambda: _all_finished(api, days, 7), timeout=1800, every=5)
            assert sorted(run["partition_key"] for run in runs) == days  # one run per day
            tries = [t["try_number"] for t in api.call(
                "GET", "/api/v2/dags/lookalike_extract/dagRuns/~/taskInstances?limit=100")["task_instances"]]
            assert max(tries) >= 2, tries  # Airflow retried what was killed or refused
            assert marker.exists() and gate.refused > 0, (marker.exists(), gate.refused)
            first = {table: dict(wh.entries(table)) for table in ("item_neighbors", "catalog")}
            for table, entries in first.items():
                assert set(days) <= set(entries), table
            for day in days:  # published once: one run record, one partition per table
                assert wh.run_record(day)["run_id"] == first["item_neighbors"][day]["run_id"]
                assert len(wh.partition_files("item_neighbors", day)) == len(first["item_neighbors"][day]["files"])

            # Redo one day: its extract and its nightly run again; only its partition changes. Airflow
            # allows one backfill per DAG and marks one complete on a 30 s timer, after its runs end.
            api.wait_for("the backfill marked complete", lambda: all(
                backfill["completed_at"] for backfill in api.call(
                    "GET", "/api/v2/backfills?dag_id=lookalike_extract")["backfills"]), timeout=120, every=5)
            _airflow(api, "backfill", "create", "--dag-id", "lookalike_extract", "--from-date", days[1],
                     "--to-date", days[1], "--reprocess-behavior", "completed")
            runs = api.wait_for("the rerun", lambda: _all_finished(api, days, 8), timeout=600, every=5)
            assert sorted(run["partition_key"] for run in runs) == sorted([*days, days[1]])

    for table, entries in first.items():
        now = wh.entries(table)
        assert now[days[1]]["run_id"] != entries[days[1]]["run_id"], f"{table}: the rerun did not replace {days[1]}"
        for day in (days[0], *days[2:]):
            assert now[day] == entries[day], f"{table}: the rerun of {days[1]} touched {day}"
        assert [path for path in wh.partition_files(table, days[1]) if entries[days[1]]["run_id"] in path] == []

    for day in days:  # six of them without a fine-tune of their own
        assert day in run_summary(cfg, day)
        assert build_report(cfg, day, tmp_path / f"report-{day}.html").exists()
    item = run_query(wh, "select max(item_id) from item_neighbors")[1][0][0]
    for path in sorted((REPO / "sql" / "analytics").glob("*.sql")):
        columns, _ = run_query(wh, path.read_text(), {"item_id": item})
        assert columns, path.name
    overlap = run_query(wh, (REPO / "sql" / "analytics" / "neighbor_overlap_day_over_day.sql").read_text())[1]
    assert overlap, "two published days: the day-over-day overlap has rows"


def _session(process) -> int | None:
    try:
        return os.getsid(process.pid)
    except (ProcessLookupError, PermissionError):
        return None


def _job_processes(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if marker in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


def test_clearing_a_running_launched_task_stops_its_whole_job(tmp_path, sample_dir):
    """train under torchrun (a launched job: torchrun and its rank), cleared while it trains: the
    task's process is stopped by Airflow and takes every process of the job with it."""
    config = write_config(tmp_path, sample_dir, train={"launcher": "torchrun", "nproc_per_node": 1,
                                                       "max_steps": 1_000_000, "minutes": 20, "batch_size": 32,
                                                       "warmup_steps": 5})
    cfg = load_config(config, environ={})
    _stage(config, "extract", DS)
    prepare_airflow(cfg, str(config))  # the metadata database and the `gpu` pool the train task runs in
    marker = f"lookalike.jobs.train --ds {DS}"
    with running_airflow(cfg, config, tmp_path, unpause=("lookalike_finetune",),
                         extra_env={"AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False"}) as api:
        run = api.call("POST", "/api/v2/dags/lookalike_finetune/dagRuns", {"logical_date": None, "conf": {"ds": DS}})
        # torchrun and its rank are both up
        job = api.wait_for("the training job's processes", lambda: (lambda found: found if len(found) >= 2 else None)(
            _job_processes(marker)), timeout=300, every=1)
        api.call("PATCH", "/api/v2/dags/lookalike_finetune", {"is_paused": True})  # the cleared task is not rerun
        api.call("POST", "/api/v2/dags/lookalike_finetune/clearTaskInstances",
                 {"dry_run": False, "dag_run_id": run["dag_run_id"], "task_ids": ["train"], "only_failed": False,
                  "only_running": False, "reset_dag_runs": True})
        _, alive = psutil.wait_procs(job, timeout=90)
        assert not alive, f"left running after the task was cleared: {[p.cmdline() for p in alive]}"
        assert not _job_processes(marker)
        assert "stopping its train job" in "".join(
            p.read_text(errors="replace") for p in (tmp_path / "airflow" / "logs").rglob("*.log"))
