"""A whole run from a password-protected PostgreSQL source, handing off to password-protected online
stores (PostgreSQL and Redis), leaves the passwords nowhere: not in the warehouse (run records),
the models (``lookalike.json``, ``registry.json``), Airflow's home (task logs), the work area, nor the
console, whether they came in a config file, environment variables or Airflow Connections
(``lookalike_source``, ``lookalike_online``, ``lookalike_redis``). The hand-off tasks of both DAGs ran:
the stores serve the night's lists."""
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from lookalike.config import load_config, redact_url
from lookalike.storage import Warehouse
from tests.conftest import DS, REDIS_PASSWORD, write_config

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _own_database(postgres_url: str, role: str, database: str, scheme: str) -> tuple[str, str]:
    """A database owned by a new role with a random password, on the test cluster: (its URL, the password)."""
    password = "Pw" + secrets.token_hex(12)
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as con:
        con.execute(sa.text(f"create role {role} login password '{password}'"))
        con.execute(sa.text(f"create database {database} owner {role}"))
    admin.dispose()
    server = sa.engine.make_url(postgres_url)
    return f"{scheme}://{role}:{password}@{server.host}:{server.port}/{database}", password


@pytest.fixture(scope="module")
def protected_source(postgres_url, tmp_path_factory):
    """A listings database owned by a role of its own with a random password, holding a small
    sample; (SQLAlchemy URL, the password, the sample's folder)."""
    url, password = _own_database(postgres_url, "lookalike_src", "listings_src", "postgresql+psycopg")
    with pytest.raises(sa.exc.OperationalError):  # the password is really checked
        sa.create_engine(url.replace(password, "wrong")).connect()
    sample = tmp_path_factory.mktemp("protected-sample")
    loaded = subprocess.run([sys.executable, "-m", "lookalike.tools.cli", "sample-data", "--out", str(sample), "--items", "300",
                             "--users", "100", "--days", "100", "--seed", "2", "--end", DS, "--load-into", url],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert password not in loaded.stdout + loaded.stderr
    return url, password, sample


@pytest.fixture(scope="module")
def online_store(postgres_url):
    """The online PostgreSQL database, owned by a role of its own with a random password: (URL, password)."""
    return _own_database(postgres_url, "lookalike_site", "online_store", "postgresql")


def _files_holding(root: Path, secret: str) -> list[str]:
    needle = secret.encode()
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.parametrize("given_as", ["config file", "environment variable", "Airflow connection"])
def test_a_whole_run_writes_and_prints_the_passwords_nowhere(protected_source, online_store, redis_url, tmp_path,
                                                             given_as):
    url, password, sample = protected_source
    online_url, online_password = online_store
    source = {"images": str(sample / "images")}
    schema = "run_" + given_as.split()[0].lower()  # each run its own generations
    serving = {"sinks": "postgres,redis", "postgres": {"schema": schema}, "redis": {"prefix": schema}}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOKALIKE_", "AIRFLOW_CONN_"))}
    if given_as == "config file":
        source["url"] = url
        serving["postgres"]["url"], serving["redis"]["url"] = online_url, redis_url
    elif given_as == "environment variable":
        env["LOOKALIKE_SOURCE__URL"] = url
        env["LOOKALIKE_SERVING__POSTGRES__URL"], env["LOOKALIKE_SERVING__REDIS__URL"] = online_url, redis_url
    else:  # the config's URLs name no database at all: the connections must be what is read
        source["url"] = "sqlite:///" + str(tmp_path / "no-such.db")
        serving["redis"]["url"] = "redis://127.0.0.1:1/0"
        server = sa.engine.make_url(url)
        env["AIRFLOW_CONN_LOOKALIKE_SOURCE"] = (f"postgres://lookalike_src:{password}@{server.host}:{server.port}"
                                                f"/listings_src")
        env["AIRFLOW_CONN_LOOKALIKE_ONLINE"] = online_url.replace("postgresql://", "postgres://")
        redis_server = sa.engine.make_url(redis_url)
        env["AIRFLOW_CONN_LOOKALIKE_REDIS"] = (f"redis://:{REDIS_PASSWORD}@{redis_server.host}:{redis_server.port}"
                                               "?db=0")
    config = write_config(tmp_path, sample, source=source, neighbors={"k": 3}, serving=serving,
                          userrec={"variants": "multimodal,popularity", "epochs": 1, "bootstrap": 50})
    run = subprocess.run([sys.executable, "-m", "lookalike.tools.cli", "run", "--config", str(config), "--ds", DS],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    console = run.stdout + run.stderr
    assert run.returncode == 0, console[-4000:]
    cfg = load_config(config, environ={k: v for k, v in env.items() if k.startswith("LOOKALIKE_")})
    assert DS in Warehouse.of(cfg).entries("item_neighbors")
    if given_as == "Airflow connection":
        assert "source: Airflow connection 'lookalike_source'" in (tmp_path / "airflow" / "logs" /
                                                                  f"lookalike_extract-{DS}.log").read_text()
    if given_as == "Airflow connection":
        nightly_log = (tmp_path / "airflow" / "logs" / f"lookalike_nightly-{DS}.log").read_text()
        assert "online store redis: Airflow connection 'lookalike_redis'" in nightly_log
        assert "online store postgres: Airflow connection 'lookalike_online'" in nightly_log
        env["LOOKALIKE_SERVING__POSTGRES__URL"], env["LOOKALIKE_SERVING__REDIS__URL"] = online_url, redis_url
    # both hand-offs ran inside the DAGs: each store serves the night's item lists and recommendations
    served = load_config(config, environ={k: v for k, v in env.items() if k.startswith("LOOKALIKE_")})
    record = Warehouse.of(served).run_record(DS)["serving"]
    for feed in ("items", "users"):
        assert {sink: r["ds"] for sink, r in record[feed]["sinks"].items()} == {"postgres": DS, "redis": DS}
    from lookalike.online.handoff import similar

    item = Warehouse.of(served).read_partition("item_neighbors", DS).sort_by([("item_id", "ascending"),
                                                                             ("rank", "ascending")]).to_pylist()
    first = [r["neighbor_id"] for r in item if r["item_id"] == item[0]["item_id"]]
    for sink in ("postgres", "redis"):
        assert [n["neighbor_id"] for n in similar(served, item[0]["item_id"], sink=sink)["neighbors"]] == first
    for secret in (password, online_password, REDIS_PASSWORD):
        assert secret not in console
        # warehouse, models, registry, work area, Airflow's home: every file but the user's own config
        assert [f for f in _files_holding(tmp_path, secret) if f != str(config)] == []
    assert not list(tmp_path.rglob("*.db-journal"))


def test_urls_in_messages_and_written_configs_lose_their_password():
    assert redact_url("query failed against postgresql+psycopg://u:s3cret@db:5432/x: timeout") == \
        "query failed against postgresql+psycopg://u:***@db:5432/x: timeout"
    assert redact_url("sqlite:///var/sample/marketplace.db") == "sqlite:///var/sample/marketplace.db"
    cfg = load_config(None, environ={"LOOKALIKE_SOURCE__URL": "postgresql://reader:hunter2@db/listings"})
    public = cfg.to_public_dict()
    assert public["source"]["url"] == "postgresql://reader:***@db/listings"
    assert "hunter2" not in repr(public) and cfg.source.url.endswith("hunter2@db/listings")
