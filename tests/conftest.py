"""Shared fixtures: small real data made once per session (a sample marketplace, a config)."""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from datetime import date
from email import message_from_bytes
from pathlib import Path

import pytest
import yaml

from lookalike.config import load_config
from lookalike.sample.marketplace import SampleSpec, generate

DS = "2026-11-21"
SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(autouse=True)
def _clean_lookalike_env(monkeypatch):
    """Tests see only the overrides they set themselves."""
    for name in list(os.environ):
        if name.startswith("LOOKALIKE_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """A small sample marketplace: 400 items, 120 users, ending on DS."""
    out = tmp_path_factory.mktemp("sample")
    generate(out, SampleSpec(items=400, users=120, days=120, seed=1, end=date.fromisoformat(DS)),
             progress=lambda *_: None)
    return out


def write_config(root: Path, sample: Path, **overrides) -> Path:
    """A config file pointing at ``sample``, with a tiny model and short training."""
    data = {
        "source": {"url": f"sqlite:///{sample / 'marketplace.db'}", "images": str(sample / "images")},
        "warehouse": str(root / "warehouse"),
        "models": str(root / "models"),
        "model": {"init": "tiny"},
        "train": {"max_steps": 40, "batch_size": 32, "warmup_steps": 5},
        "neighbors": {"k": 5},
        "spark": {"master": "local[2]"},
        "airflow": {"home": str(root / "airflow")},
    }
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        if name:
            data.setdefault(section, {})[name] = value
        else:
            data[section] = value
    path = root / "lookalike.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def tiny_model(path: Path, seed: int, version: str) -> str:
    """An untrained tiny SigLIP saved as a Hugging Face model folder (for stages that need a model)."""
    import torch
    from transformers import SiglipModel

    from lookalike.siglip import Preprocess, build_config, save_model, train_tokenizer

    tok = train_tokenizer(["red tee", "blue vase"] * 10, 30, 16)
    torch.manual_seed(seed)
    save_model(SiglipModel(build_config("tiny", vocab_size=len(tok), max_text_length=16)), tok, Preprocess(32),
               path, {"version": version})
    return str(path)


@pytest.fixture
def config_file(tmp_path, sample_dir) -> Path:
    return write_config(tmp_path, sample_dir)


@pytest.fixture
def cfg(config_file):
    return load_config(config_file)


logging.getLogger("py4j").setLevel(logging.WARNING)  # its shutdown chatter after pytest closes stdout


@pytest.fixture(scope="session", autouse=True)
def _stop_spark_at_exit():
    yield
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    if session is not None:
        session.stop()


POSTGRES_PASSWORD = "lookalike-test-superuser"


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL cluster on a loopback port (the installed server binaries); its URL.

    ``initdb`` refuses to run as root, so as root the cluster belongs to the ``postgres`` user.
    The cluster and its files are removed at the end of the session.
    """
    bindir = _postgres_bin()
    if bindir is None:
        message = "PostgreSQL server binaries (initdb, pg_ctl) are not installed; .ci/run installs them"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    # Not under pytest's tmp tree: that is private to root (0700), and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="lookalike-postgres-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pwfile = root / "pw"  # TCP connections must give the password, as on a real server
    pwfile.write_text(POSTGRES_PASSWORD + "\n")
    if as_user:
        shutil.chown(pwfile, "postgres")
    for step in ([str(bindir / "initdb"), "-D", str(data), "-U", "lookalike", f"--pwfile={pwfile}",
                  "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--no-instructions"],
                 [str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "server.log"),
                  "-o", f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1", "start"]):
        done = subprocess.run([*as_user, *step], capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(root, ignore_errors=True)
            pytest.fail(f"{Path(step[0]).name} failed: {done.stderr or done.stdout}")
    try:
        yield f"postgresql+psycopg://lookalike:{POSTGRES_PASSWORD}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def reset_moto(host: str, port: int) -> None:
    """Empty moto's store: its backends live in the test process, so every server started in it
    sees the buckets an earlier test left (a ``lake`` with another test's later ds, say)."""
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST"), timeout=30)


@pytest.fixture
def s3(monkeypatch, tmp_path):
    """moto's real S3 server on a loopback port, with a ``models`` bucket; boto3 pointed at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    reset_moto(host, port)
    for name, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test",
                        "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                        "LOOKALIKE_CACHE_DIR": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3").create_bucket(Bucket="models")
    yield
    server.stop()


class Inbox:
    """An aiosmtpd handler keeping every message it is sent."""

    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.original_content)))
        return "250 OK"

    def wait_for(self, predicate, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [message for to, message in self.messages if predicate(to, message)]
            if found:
                return found[0]
            time.sleep(0.5)
        raise AssertionError(f"no such mail within {timeout:.0f} s; got {[m['Subject'] for _, m in self.messages]}")


@pytest.fixture
def smtp_server():
    """A real SMTP server on a loopback port; (the inbox, the AIRFLOW_CONN_SMTP_DEFAULT value)."""
    from aiosmtpd.controller import Controller

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    connection = json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": port,
                             "extra": {"disable_ssl": True, "disable_tls": True}})
    yield inbox, connection
    controller.stop()


def rest_call(base: str, method: str, path: str, body: dict | None = None, token: str | None = None):
    """One JSON call to Airflow's REST API at ``base`` (with a bearer token once there is one)."""
    import urllib.request

    request = urllib.request.Request(base + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


REDIS_PASSWORD = "redis-" + __import__("secrets").token_hex(8)  # searched for in files and logs by tests


def _redis_server() -> str:
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(server).exists():
        message = "redis-server is not installed (apt-get install redis-server); .ci/run installs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return server


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def free_cluster_port() -> int:
    """A free port under 55536 whose cluster bus port (10,000 higher) is free too."""
    import random

    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            with socket.socket() as one, socket.socket() as bus:
                one.bind(("127.0.0.1", port))
                bus.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    pytest.fail("no free port pair for a Redis Cluster node")


def _start_redis(server: str, root: Path, port: int, *extra: str) -> subprocess.Popen:
    """A redis-server on loopback ``port`` with the test password, answering once this returns."""
    process = subprocess.Popen([server, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(root),
                                "--save", "", "--appendonly", "no", "--requirepass", REDIS_PASSWORD, *extra],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.05)
    process.kill()
    pytest.fail("redis-server did not start")


@pytest.fixture(scope="session")
def redis_url():
    """A throwaway Redis server on a loopback port (Debian's redis-server), with a password; its URL.
    Stopped by its PID at the end of the session."""
    server = _redis_server()
    root = Path(tempfile.mkdtemp(prefix="lookalike-redis-"))
    port = _free_port()
    process = _start_redis(server, root, port)
    try:
        yield f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_cluster_url():
    """A throwaway Redis Cluster of three masters on loopback ports (``redis-cli --cluster create``),
    with a password; the URL of one of its nodes. Every node is stopped by its PID at the end."""
    server = _redis_server()
    root = Path(tempfile.mkdtemp(prefix="lookalike-redis-cluster-"))
    ports, processes = [free_cluster_port() for _ in range(3)], []
    try:
        for port in ports:
            (root / str(port)).mkdir()
            processes.append(_start_redis(server, root / str(port), port, "--cluster-enabled", "yes",
                                          "--cluster-config-file", str(root / str(port) / "nodes.conf"),
                                          "--masterauth", REDIS_PASSWORD))
        created = subprocess.run(["redis-cli", "-a", REDIS_PASSWORD, "--no-auth-warning", "--cluster", "create",
                                  *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0", "--cluster-yes"],
                                 capture_output=True, text=True, timeout=60)
        if created.returncode != 0:
            pytest.fail(f"redis-cli --cluster create failed: {created.stdout[-2000:]} {created.stderr[-2000:]}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = subprocess.run(["redis-cli", "-a", REDIS_PASSWORD, "--no-auth-warning", "-p", str(ports[0]),
                                    "cluster", "info"], capture_output=True, text=True).stdout
            if "cluster_state:ok" in state:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the Redis Cluster did not become ready: {state}")
        yield f"redis://:{REDIS_PASSWORD}@127.0.0.1:{ports[0]}/0"
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
