import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.storage import Warehouse, write_parquet


def _staged(tmp_path, name, values):
    folder = tmp_path / "staged" / name
    write_parquet(pa.table({"x": values}), folder / "part-0.parquet")
    return folder


def _read(wh, table, ds):
    return pq.read_table(wh.partitions(table)[ds]).column("x").to_pylist()


def test_commit_then_rerun_replaces_the_partition(tmp_path):
    wh = Warehouse(tmp_path / "wh")
    wh.commit("t", "2026-01-01", _staged(tmp_path, "a", [1, 2]), rows=2, retain=5, run_id="r1")
    wh.commit("t", "2026-01-01", _staged(tmp_path, "b", [3]), rows=1, retain=5, run_id="r2")
    assert _read(wh, "t", "2026-01-01") == [3]
    assert [p.name for p in (wh.table_dir("t") / "ds=2026-01-01").iterdir()] == ["run=r2"]  # old run removed


def test_retention_keeps_the_newest_partitions(tmp_path):
    wh = Warehouse(tmp_path / "wh")
    for day in range(1, 5):
        wh.commit("t", f"2026-01-0{day}", _staged(tmp_path, str(day), [day]), rows=1, retain=2, run_id=f"r{day}")
    assert list(wh.partitions("t")) == ["2026-01-03", "2026-01-04"]
    assert sorted(p.name for p in wh.table_dir("t").glob("ds=*")) == ["ds=2026-01-03", "ds=2026-01-04"]


def test_a_crash_before_the_manifest_switch_leaves_the_old_partition(tmp_path, monkeypatch):
    wh = Warehouse(tmp_path / "wh")
    wh.commit("t", "2026-01-01", _staged(tmp_path, "a", [1]), rows=1, retain=5, run_id="r1")

    import pipelines.storage as storage

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(storage, "atomic_write_text", crash)
    with pytest.raises(OSError):
        wh.commit("t", "2026-01-01", _staged(tmp_path, "b", [2]), rows=1, retain=5, run_id="r2")
    assert _read(wh, "t", "2026-01-01") == [1]
