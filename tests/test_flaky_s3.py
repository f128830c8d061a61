"""A flaky object store: 500s, 503 SlowDown and reset connections on 10% of requests cost retries,
never a table. Everything goes through tests/faultproxy.py in front of moto's S3 server."""
import hashlib
import threading

import boto3
import pytest

from lookalike.config import load_config
from lookalike import storage
from lookalike.errors import TRANSIENT, classify
from lookalike.extract.images import read_image_bytes
from lookalike.objectstore import local_model_dir, upload_dir
from lookalike.publish.stage import NIGHTLY_TABLES, run_publish
from lookalike.query import run_query
from lookalike.sample.load import upload_images
from lookalike.storage import PublishConflict, Warehouse
from tests.conftest import reset_moto, tiny_model, write_config
from tests.faultproxy import FAULTS, FaultProxy
from tests.publish.test_stage import K, _stage_run

DAYS = ["2026-11-18", "2026-11-19", "2026-11-20", "2026-11-21"]


@pytest.fixture
def flaky(monkeypatch, tmp_path):
    """moto's S3 server behind a proxy that breaks 10% of requests (seeded); boto3 and pyarrow go through it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    reset_moto(host, port)
    direct = boto3.client("s3", endpoint_url=f"http://{host}:{port}", aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")
    direct.create_bucket(Bucket="flaky")  # moto's state is per process: each test gets an empty bucket
    for page in direct.get_paginator("list_objects_v2").paginate(Bucket="flaky"):
        for obj in page.get("Contents", []):
            direct.delete_object(Bucket="flaky", Key=obj["Key"])
    with FaultProxy(f"http://{host}:{port}", rate=0.10, seed=7) as proxy:
        for name, value in {"AWS_ENDPOINT_URL": proxy.url, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                            "AWS_DEFAULT_REGION": "us-east-1", "LOOKALIKE_CACHE_DIR": str(tmp_path / "cache")}.items():
            monkeypatch.setenv(name, value)
        yield proxy, direct
    server.stop()


def _keys(direct, prefix: str) -> set[str]:
    pages = direct.get_paginator("list_objects_v2").paginate(Bucket="flaky", Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_reads_uploads_model_cache_publish_and_retention_survive_a_flaky_store(flaky, tmp_path, sample_dir):
    proxy, direct = flaky
    config = write_config(tmp_path, sample_dir, neighbors={"k": K}, warehouse="s3://flaky/warehouse",
                          work_dir=str(tmp_path / "work"), publish={"retain_partitions": 2})
    cfg = load_config(config, environ={})
    wh = Warehouse.of(cfg)

    for ds in DAYS:  # publishes, conditional manifest PUTs, run records, retention's deletes
        _stage_run(wh, ds)
        run_publish(cfg, ds)
    assert list(wh.entries("item_neighbors")) == DAYS[-2:]
    assert run_query(wh, "select ds, count(*) from item_neighbors_all group by ds order by ds")[1] == \
        [(ds, 4 * K) for ds in DAYS[-2:]]
    live = {f"warehouse/{t}/{e['path']}/{name}" for t in NIGHTLY_TABLES for e in wh.entries(t).values()
            for name in e["files"]}
    runs = {f"warehouse/_runs/{ds}.json" for ds in DAYS}
    assert _keys(direct, "warehouse/") - live - runs == {"warehouse/_manifest.json"}  # no orphan, nothing retired left

    images = sorted(p for p in (sample_dir / "images").rglob("*.jpg"))[:60]
    upload_images(sample_dir / "images", "s3://flaky/images", threads=8)
    for path in images:  # the image store's reads
        key = path.relative_to(sample_dir / "images").as_posix()
        data, reason = read_image_bytes("s3://flaky/images", key, 20_000_000)
        assert reason is None and _sha(data) == _sha(path.read_bytes())

    model = tiny_model(tmp_path / "model", seed=0, version="v1")
    upload_dir(tmp_path / "model", "s3://flaky/models/v1")  # the model cache: upload, then fetch and verify
    cached = local_model_dir("s3://flaky/models/v1")
    for path in (tmp_path / "model").rglob("*"):
        if path.is_file():
            assert _sha((cached / path.relative_to(model)).read_bytes()) == _sha(path.read_bytes())

    faults = {f: proxy.counts[f] for f in FAULTS}
    assert all(faults.values()), faults  # every kind of fault was injected, and retried
    assert 0.05 < sum(faults.values()) / sum(proxy.counts.values()) < 0.15


def test_two_publishes_of_one_ds_racing_through_a_flaky_store_one_wins_the_loser_removes_its_files(flaky, tmp_path,
                                                                                                 sample_dir):
    _, direct = flaky
    config = write_config(tmp_path, sample_dir, neighbors={"k": K}, warehouse="s3://flaky/warehouse",
                          work_dir=str(tmp_path / "work"))
    wh = Warehouse.of(load_config(config, environ={}))
    _stage_run(wh, DAYS[0])
    files = sorted(wh.work(DAYS[0], "item_neighbors").glob("*.parquet"))
    for ds in DAYS:
        runs = [wh.begin(ds), wh.begin(ds)]  # both read the manifest before either commits
        for run in runs:
            run.add("item_neighbors", files, rows=4 * K)
        outcomes, start = {}, threading.Barrier(2)

        def commit(run):
            start.wait()
            try:
                run.commit(retain=0)
                outcomes[run.run_id] = "won"
            except PublishConflict:
                outcomes[run.run_id] = "lost"

        threads = [threading.Thread(target=commit, args=(run,)) for run in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes.values()) == ["lost", "won"], outcomes
        winner = next(run for run in runs if outcomes[run.run_id] == "won")
        assert wh.entries("item_neighbors")[ds]["run_id"] == winner.run_id
        assert {k.split("/")[3] for k in _keys(direct, f"warehouse/item_neighbors/ds={ds}/")} == \
            {f"run={winner.run_id}"}  # the loser's files are gone


def test_a_store_that_stays_down_fails_as_transient_and_publishes_nothing(flaky, tmp_path, sample_dir, monkeypatch):
    proxy, direct = flaky
    config = write_config(tmp_path, sample_dir, neighbors={"k": K}, warehouse="s3://flaky/warehouse",
                          work_dir=str(tmp_path / "work"))
    cfg = load_config(config, environ={})
    wh = Warehouse.of(cfg)
    _stage_run(wh, DAYS[0])
    run_publish(cfg, DAYS[0])
    published = _keys(direct, "warehouse/")
    _stage_run(wh, DAYS[1])
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    storage._objects.cache_clear()  # new clients, with 3 attempts per request
    proxy.rate = 1.0
    with pytest.raises(Exception) as failed:
        run_publish(load_config(config, environ={}), DAYS[1])
    assert classify(failed.value) == TRANSIENT, repr(failed.value)  # Airflow retries it with backoff (exit 75)
    proxy.rate = 0.0
    assert _keys(direct, "warehouse/") == published  # the store refused every write: nothing half-published
    assert list(wh.entries("item_neighbors")) == [DAYS[0]]
