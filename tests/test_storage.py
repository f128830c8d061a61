"""The warehouse's publish protocol, on local disk and on moto's real S3 server."""
import uuid

import boto3
import pyarrow as pa
import pytest

from lookalike.storage import PublishConflict, Warehouse, write_parquet

D1, D2 = "2026-01-01", "2026-01-02"


@pytest.fixture(params=["local", "s3"])
def wh(request, tmp_path):
    if request.param == "local":
        return Warehouse.at(tmp_path / "wh")
    request.getfixturevalue("s3")
    bucket = f"lake-{uuid.uuid4().hex[:8]}"  # moto's state is per process: a bucket of its own per test
    boto3.client("s3").create_bucket(Bucket=bucket)
    return Warehouse.at(f"s3://{bucket}/warehouse", tmp_path / "work")


def _file(tmp_path, values):
    return write_parquet(pa.table({"x": values}), tmp_path / "staged" / f"{values}" / "part-0.parquet")


def _publish(wh, tmp_path, ds, values, *, table="t", retain=5):
    publication = wh.begin(ds)
    publication.add(table, [_file(tmp_path, values)], rows=len(values))
    publication.commit(retain=retain)
    return publication


def _read(wh, ds, table="t"):
    return wh.read_partition(table, ds).column("x").to_pylist()


def _runs(wh, ds, table="t"):
    return wh.objects.children(f"{table}/ds={ds}")


def test_a_rerun_replaces_the_partition_and_removes_the_old_run(wh, tmp_path):
    _publish(wh, tmp_path, D1, [1, 2])
    second = _publish(wh, tmp_path, D1, [3])
    assert _read(wh, D1) == [3]
    assert _runs(wh, D1) == [f"run={second.run_id}"]
    assert wh.entries("t")[D1]["rows"] == 1


def test_retention_keeps_the_newest_partitions(wh, tmp_path):
    for day in range(1, 5):
        _publish(wh, tmp_path, f"2026-01-0{day}", [day], retain=2)
    assert list(wh.entries("t")) == ["2026-01-03", "2026-01-04"]
    assert wh.objects.children("t") == ["ds=2026-01-03", "ds=2026-01-04"]


def test_files_written_but_not_committed_stay_invisible_and_a_rerun_cleans_them(wh, tmp_path):
    _publish(wh, tmp_path, D1, [1])
    crashed = wh.begin(D1)
    crashed.add("t", [_file(tmp_path, [9, 9])], rows=2)  # a worker dies here, before the switch
    assert _read(wh, D1) == [1]
    assert len(_runs(wh, D1)) == 2
    rerun = _publish(wh, tmp_path, D1, [2])
    assert _read(wh, D1) == [2]
    assert _runs(wh, D1) == [f"run={rerun.run_id}"]


def test_two_runs_of_one_ds_cannot_both_win(wh, tmp_path):
    _publish(wh, tmp_path, D1, [0])
    slow, fast = wh.begin(D1), wh.begin(D1)
    slow.add("t", [_file(tmp_path, [1])], rows=1)
    fast.add("t", [_file(tmp_path, [2])], rows=1)
    fast.commit(retain=5)
    with pytest.raises(PublishConflict, match="another run published ds=2026-01-01"):
        slow.commit(retain=5)
    assert _read(wh, D1) == [2]
    assert _runs(wh, D1) == [f"run={fast.run_id}"]  # the loser removed its own files


def test_runs_of_different_days_both_commit(wh, tmp_path):
    a, b = wh.begin(D1), wh.begin(D2)
    a.add("t", [_file(tmp_path, [1])], rows=1)
    b.add("t", [_file(tmp_path, [2])], rows=1)
    b.commit(retain=5)
    a.commit(retain=5)  # the manifest changed under it: re-read and merged, not overwritten
    assert (_read(wh, D1), _read(wh, D2)) == ([1], [2])


def test_every_table_of_a_run_switches_at_once(wh, tmp_path):
    publication = wh.begin(D1)
    publication.add("t", [_file(tmp_path, [1])], rows=1)
    publication.add("u", [_file(tmp_path, [2])], rows=1)
    assert wh.entries("t") == {} and wh.entries("u") == {}
    generation = wh.manifest()["generation"]
    publication.commit(retain=5, record={"ds": D1})
    assert wh.manifest()["generation"] == generation + 1
    assert (_read(wh, D1, "t"), _read(wh, D1, "u")) == ([1], [2])
    assert wh.run_record(D1) == {"ds": D1}
