"""The compose stack, running: the DAGs triggered through the real api-server run on the Celery
workers (train on the gpu-queue worker), embed on the Spark cluster, publish to the S3 server and
hand the night off to the online PostgreSQL database and Redis.

Run by ``make stack-test`` (scripts/stack-test.sh), which builds the images, brings the stack up
with the test-only override docker/stack-test/compose.yml and sets ``LOOKALIKE_STACK_FILE``;
skipped anywhere else.
"""
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.conftest import rest_call

REPO = Path(__file__).resolve().parents[2]
STACK = os.environ.get("LOOKALIKE_STACK_FILE")
pytestmark = pytest.mark.skipif(not STACK, reason="run by `make stack-test`, which brings the compose stack up")

API = "http://127.0.0.1:8080"
SPARK_MASTER_UI = "http://127.0.0.1:8081"
S3 = "http://127.0.0.1:9000"
# The order a scheduler chains them in through Assets, each with the tasks it must run.
DAGS = {
    "lookalike_extract": {"extract"},
    "lookalike_finetune": {"train", "evaluate"},
    "lookalike_nightly": {"embed", "neighbors", "experiments", "publish", "handoff", "report"},
    "lookalike_user_recs": {"userrec", "publish", "handoff"},
}
# The seeded sample ends yesterday; the run is for today's partition (window [today - 90 d, today)).
DS = datetime.now(timezone.utc).date().isoformat()


def compose(*args: str, timeout: float = 120) -> str:
    proc = subprocess.run(["docker-compose", "-f", STACK, *args], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"docker-compose {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


def container_of(service: str) -> str:
    ids = compose("ps", "-q", service).split()
    assert len(ids) == 1, f"{service}: expected one container, got {ids}"
    return ids[0]


def inspect(container: str, template: str) -> str:
    return subprocess.run(["docker", "inspect", "-f", template, container], capture_output=True, text=True,
                          check=True).stdout.strip()


def wait_for(what: str, check, timeout: float, every: float = 5.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (OSError, urllib.error.URLError, json.JSONDecodeError) as exc:  # not up yet
            last = exc
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last})")


class Api:
    def __init__(self):
        self.token = None

    def call(self, method: str, path: str, body: dict | None = None):
        return rest_call(API, method, path, body, self.token)


def _seeded() -> bool:
    container = container_of("lookalike-seed")
    state = inspect(container, "{{.State.Status}} {{.State.ExitCode}}")
    if state.startswith("exited"):
        assert state == "exited 0", "the seed job failed:\n" + compose("logs", "--tail", "60", "lookalike-seed")
        return True
    return False


@pytest.fixture(scope="module")
def api() -> Api:
    wait_for("the seed job (sample marketplace into PostgreSQL and the S3 server)", _seeded, timeout=900)
    client = Api()
    wait_for("the api-server", lambda: client.call("GET", "/api/v2/monitor/health"), timeout=600)
    passwords = json.loads(compose("exec", "-T", "airflow-apiserver", "cat", "/data/airflow/passwords.json"))
    client.token = client.call("POST", "/auth/token", {"username": "admin", "password": passwords["admin"]})[
        "access_token"]
    for dag_id in DAGS:
        wait_for(f"{dag_id} to be parsed", lambda: client.call("GET", f"/api/v2/dags/{dag_id}"), timeout=300)
    return client


def _finished(api: Api, path: str):
    state = api.call("GET", path)["state"]
    return state if state in ("success", "failed") else None


def _task_log(api: Api, run_path: str, task_id: str, instance: dict) -> str:
    """A task's state and, unless it succeeded, the last lines of its log (from the REST API)."""
    if instance["state"] == "success":
        return f"{task_id}: success"
    try:
        log = api.call("GET", f"{run_path}/taskInstances/{task_id}/logs/{max(instance['try_number'], 1)}")
        lines = [entry.get("event", str(entry)) if isinstance(entry, dict) else str(entry)
                 for entry in log.get("content", [])]
    except (OSError, urllib.error.URLError) as exc:
        lines = [f"(its log could not be read: {exc})"]
    return f"{task_id}: {instance['state']}\n    " + "\n    ".join(line[:500] for line in lines[-25:])


@pytest.fixture(scope="module")
def runs(api) -> dict[str, dict[str, dict]]:
    """Each DAG unpaused, triggered for DS and finished, in order: its task instances by task id."""
    done = {}
    for dag_id, tasks in DAGS.items():
        assert api.call("GET", f"/api/v2/dags/{dag_id}")["is_paused"], f"{dag_id} should be created paused"
        api.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        started = time.monotonic()
        run = api.call("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": {"ds": DS}})
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run['dag_run_id']}"
        state = wait_for(f"{dag_id} for ds={DS}", lambda: _finished(api, path), timeout=1500)
        instances = {t["task_id"]: t for t in api.call("GET", f"{path}/taskInstances")["task_instances"]}
        where = ", ".join(f"{task_id} on {instance['hostname']}" for task_id, instance in instances.items())
        print(f"{dag_id}: {state} in {time.monotonic() - started:.0f} s ({where})", file=sys.stderr)
        assert state == "success", f"{dag_id} {state}: " + "\n".join(
            _task_log(api, path, task_id, instance) for task_id, instance in instances.items())
        assert tasks <= {t for t, i in instances.items() if i["state"] == "success"}, instances
        done[dag_id] = instances
    return done


def test_train_ran_on_the_gpu_queue_worker_and_the_rest_on_the_default_worker(runs):
    gpu_host = inspect(container_of("airflow-gpu-worker"), "{{.Config.Hostname}}")
    default_host = inspect(container_of("airflow-worker"), "{{.Config.Hostname}}")
    train = runs["lookalike_finetune"]["train"]
    assert train["queue"] == "gpu" and train["hostname"] == gpu_host, train
    for dag_id, instances in runs.items():
        for task_id, instance in instances.items():
            if instance["state"] == "skipped":  # approve_drift, publish_accepted: the drift gate passed
                continue
            if (dag_id, task_id) != ("lookalike_finetune", "train"):
                assert instance["hostname"] == default_host, (dag_id, task_id, instance["hostname"])


def test_embed_ran_on_the_spark_cluster(runs):
    apps = json.loads(urllib.request.urlopen(SPARK_MASTER_UI + "/json/", timeout=30).read())
    embeds = [app for app in apps["completedapps"] + apps["activeapps"] if app["name"] == f"lookalike-embed-{DS}"]
    assert embeds, f"no lookalike-embed-{DS} application on the Spark master: {[a['name'] for a in apps['completedapps']]}"
    app_id = embeds[-1]["id"]
    # The executor's own log, on the Spark worker: it ran the embedding tasks.
    stderr = compose("exec", "-T", "spark-worker", "sh", "-c", f"cat /opt/spark/work/{app_id}/*/stderr")
    finished = [line for line in stderr.splitlines() if "Finished task" in line]
    assert finished, f"executor log of {app_id} shows no finished task:\n{stderr[-3000:]}"


def _s3_env() -> dict:
    """The host's `lookalike` pointed at the stack's warehouse on its S3 server."""
    return {**os.environ, "LOOKALIKE_WAREHOUSE": "s3://lookalike/warehouse", "AWS_ENDPOINT_URL": S3,
            "AWS_ACCESS_KEY_ID": os.environ.get("MINIO_ROOT_USER", "lookalike"),
            "AWS_SECRET_ACCESS_KEY": os.environ.get("MINIO_ROOT_PASSWORD", "lookalike-secret"),
            "AWS_DEFAULT_REGION": "us-east-1"}


def test_every_table_is_published_to_the_s3_server(runs):
    env = _s3_env()
    from lookalike.publish.stage import EXPERIMENT_TABLES
    from lookalike.schemas import PUBLISHED

    counts = {}
    for table in PUBLISHED:
        sql = f"select count(*) as n, min(ds) as ds from {table}"
        proc = subprocess.run([str(REPO / ".venv" / "bin" / "lookalike"), "query", "--format", "json", sql],
                              env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
        assert proc.returncode == 0, f"{table}: {proc.stderr[-2000:]}"
        row = json.loads(proc.stdout)[0]
        counts[table] = row["n"]
        if table in EXPERIMENT_TABLES:  # published while an A/B test runs; the stack's config runs none
            assert row["n"] == 0, (table, row)
        elif table == "item_neighbors_intraday":  # published by lookalike_intraday's hours; none runs here
            assert row["n"] == 0, (table, row)
        elif table != "quarantine":  # a clean sample quarantines nothing
            assert row["n"] > 0 and str(row["ds"]) == DS, (table, row)
    k = 20  # neighbors.k, the stack's default
    assert counts["item_neighbors"] == k * counts["item_embeddings"], counts
    print("published rows: " + json.dumps(counts), file=sys.stderr)


# Outside Airflow (a CLI in a container), the online stores' URLs come from the config, as at a site.
ONLINE = {"LOOKALIKE_SERVING__POSTGRES__URL": "postgresql://lookalike_site:lookalike-site@postgres:5432/online",
          "LOOKALIKE_SERVING__REDIS__URL": "redis://redis:6379/1"}


def test_the_night_is_handed_off_and_the_site_reads_one_list_back(runs):
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "lookalike"), "query", "--format", "json",
                           "select item_id, neighbor_id from item_neighbors where rank <= 20 order by item_id, rank"
                           " limit 20"], capture_output=True, text=True, timeout=300, env=_s3_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout)
    item = rows[0]["item_id"]
    published = [r["neighbor_id"] for r in rows if r["item_id"] == item]
    env = [flag for name, value in ONLINE.items() for flag in ("-e", f"{name}={value}")]
    for sink in ("postgres", "redis"):
        shown = json.loads(compose("exec", "-T", *env, "airflow-worker", "lookalike", "similar", item, "--sink", sink,
                                   "--format", "json", timeout=300))
        assert [n["neighbor_id"] for n in shown["neighbors"]] == published, (sink, shown)
    status = json.loads(compose("exec", "-T", *env, "airflow-worker", "lookalike", "serving", "status", "--format",
                                "json", timeout=300))
    assert {(r["sink"], r["feed"]): r["ds"] for r in status} == {(s, f): DS for s in ("postgres", "redis")
                                                                 for f in ("items", "users")}
