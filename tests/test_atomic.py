"""The one write-then-rename: whole or nothing, for files and folders."""
import pytest

from lookalike.atomic import atomic_path, atomic_write_text


def test_a_file_appears_whole_and_a_failed_write_leaves_the_old_one_and_no_temporary(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".a.json.")  # hidden, beside it
        tmp.write_text("new")
        assert target.read_text() == "old"  # nothing visible before the block ends
    assert target.read_text() == "new"


def test_a_folder_written_twice_keeps_the_first_only_when_asked(tmp_path):
    target = tmp_path / "model-v1"
    for content in ("first", "second"):
        with atomic_path(target, first_wins=True) as tmp:
            tmp.mkdir()
            (tmp / "weights").write_text(content)
    assert (target / "weights").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-v1"]
    with pytest.raises(OSError):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "weights").write_text("third")
    assert (target / "weights").read_text() == "first" and sorted(p.name for p in tmp_path.iterdir()) == ["model-v1"]


def test_the_hook_runs_between_the_write_and_the_rename(tmp_path):
    target, seen = tmp_path / "x.txt", []
    atomic_write_text(target, "data", before_rename=lambda: seen.append(target.exists()))
    assert seen == [False] and target.read_text() == "data"
