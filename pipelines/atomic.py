"""The one write-then-rename of the package: a file or a folder appears whole or not at all
(standard library only)."""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path, *, first_wins: bool = False, before_rename=None) -> Iterator[Path]:
    """A temporary path beside ``path`` (hidden, ``.tmp``) for the block to write a file or a folder
    to; moved onto ``path`` in one rename when the block ends, removed when it raises. A reader
    sees all of it or none of it, and a crash leaves no half file. Every write-then-rename of the
    package goes through here.

    ``first_wins``: a folder that a concurrent writer moved into place first is kept and ours
    removed (both wrote the same content: a model downloaded or a baseline fitted twice).
    ``before_rename``: a hook between the write and the rename, for crash points."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        if before_rename is not None:
            before_rename()
        try:
            os.replace(tmp, path)
        except OSError:
            if not (first_wins and path.is_dir()):
                raise
            _remove(tmp)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes, before_rename=None) -> None:
    """``data`` to ``path``, synced to disk, through ``atomic_path``."""
    with atomic_path(path, before_rename=before_rename) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_text(path: Path, text: str, before_rename=None) -> None:
    atomic_write_bytes(path, text.encode(), before_rename)
