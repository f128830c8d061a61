"""A whole run from a password-protected PostgreSQL source leaves the password nowhere: not in the
warehouse (run records), the models (``lookalike.json``, ``registry.json``), Airflow's home (task
logs), the work area, nor the console, whether it came in a config file, an environment variable
or an Airflow Connection (``lookalike_source``)."""
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipelines.config import load_config, redact_url
from pipelines.storage import Warehouse
from tests.conftest import DS, write_config

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def protected_source(postgres_url, tmp_path_factory):
    """A listings database owned by a role of its own with a random password, holding a small
    sample; (SQLAlchemy URL, the password, the sample's folder)."""
    password = "Pw" + secrets.token_hex(12)
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as con:
        con.execute(sa.text(f"create role lookalike_src login password '{password}'"))
        con.execute(sa.text("create database listings_src owner lookalike_src"))
    admin.dispose()
    server = sa.engine.make_url(postgres_url)
    url = f"postgresql+psycopg://lookalike_src:{password}@{server.host}:{server.port}/listings_src"
    with pytest.raises(sa.exc.OperationalError):  # the password is really checked
        sa.create_engine(url.replace(password, "wrong")).connect()
    sample = tmp_path_factory.mktemp("protected-sample")
    loaded = subprocess.run([sys.executable, "-m", "pipelines.tools.cli", "sample-data", "--out", str(sample), "--items", "300",
                             "--users", "100", "--days", "100", "--seed", "2", "--end", DS, "--load-into", url],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert password not in loaded.stdout + loaded.stderr
    return url, password, sample


def _files_holding(root: Path, secret: str) -> list[str]:
    needle = secret.encode()
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.parametrize("given_as", ["config file", "environment variable", "Airflow connection"])
def test_a_whole_run_writes_and_prints_the_source_password_nowhere(protected_source, tmp_path, given_as):
    url, password, sample = protected_source
    source = {"images": str(sample / "images")}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOKALIKE_", "AIRFLOW_CONN_"))}
    if given_as == "config file":
        source["url"] = url
    elif given_as == "environment variable":
        env["LOOKALIKE_SOURCE__URL"] = url
    else:  # the config's source.url names no database at all: the connection must be what is read
        source["url"] = "sqlite:///" + str(tmp_path / "no-such.db")
        server = sa.engine.make_url(url)
        env["AIRFLOW_CONN_LOOKALIKE_SOURCE"] = (f"postgres://lookalike_src:{password}@{server.host}:{server.port}"
                                                f"/listings_src")
    config = write_config(tmp_path, sample, source=source, neighbors={"k": 3},
                          userrec={"variants": "multimodal,popularity", "epochs": 1, "bootstrap": 50})
    run = subprocess.run([sys.executable, "-m", "pipelines.tools.cli", "run", "--config", str(config), "--ds", DS],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    console = run.stdout + run.stderr
    assert run.returncode == 0, console[-4000:]
    cfg = load_config(config, environ={k: v for k, v in env.items() if k.startswith("LOOKALIKE_")})
    assert DS in Warehouse.of(cfg).entries("item_neighbors")
    if given_as == "Airflow connection":
        assert "source: Airflow connection 'lookalike_source'" in (tmp_path / "airflow" / "logs" /
                                                                  f"lookalike_extract-{DS}.log").read_text()
    assert password not in console
    # warehouse, models, registry, work area, Airflow's home: every file but the user's own config
    assert [f for f in _files_holding(tmp_path, password) if f != str(config)] == []
    assert not list(tmp_path.rglob("*.db-journal"))


def test_urls_in_messages_and_written_configs_lose_their_password():
    assert redact_url("query failed against postgresql+psycopg://u:s3cret@db:5432/x: timeout") == \
        "query failed against postgresql+psycopg://u:***@db:5432/x: timeout"
    assert redact_url("sqlite:///var/sample/marketplace.db") == "sqlite:///var/sample/marketplace.db"
    cfg = load_config(None, environ={"LOOKALIKE_SOURCE__URL": "postgresql://reader:hunter2@db/listings"})
    public = cfg.to_public_dict()
    assert public["source"]["url"] == "postgresql://reader:***@db/listings"
    assert "hunter2" not in repr(public) and cfg.source.url.endswith("hunter2@db/listings")
