"""Where everything lives: every path is built here from (table, ds, run), nowhere else.

Warehouse layout::

    <warehouse>/_work/ds=<ds>/<name>/            a run's private work area (replaced on rerun)
    <warehouse>/<table>/ds=<ds>/run=<run_id>/    an immutable published partition
    <warehouse>/<table>/_manifest.json           which run each ds points to (the commit point)

Publishing writes the partition's files under a fresh ``run=`` folder, then switches the
manifest with an atomic rename. Readers go through the manifest, so they see the old partition
or the new one, never a mixture; superseded runs are removed only after the switch.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

PUBLISHED_TABLES = ("listings_snapshot", "catalog", "quarantine", "item_embeddings", "item_neighbors", "eval_metrics")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: no half file on a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_parquet(table: pa.Table, path: Path) -> Path:
    """Write one Parquet file atomically (``.tmp`` then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


@dataclass(frozen=True)
class Warehouse:
    root: Path

    @classmethod
    def at(cls, location: str | os.PathLike) -> "Warehouse":
        text = str(location)
        if "://" in text:
            raise NotImplementedError(f"warehouse {text}: only local directories are supported so far")
        return cls(Path(text))

    # ---- the work area of one ds (private to the run; tasks pass these paths as URIs) ----
    def work(self, ds: str, name: str) -> Path:
        return self.root / "_work" / f"ds={ds}" / name

    def fresh_work(self, ds: str, name: str) -> Path:
        """An empty work folder for ``name``: a rerun replaces, never appends."""
        path = self.work(ds, name)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    # ---- published tables ----
    def table_dir(self, table: str) -> Path:
        return self.root / table

    def manifest_path(self, table: str) -> Path:
        return self.table_dir(table) / "_manifest.json"

    def manifest(self, table: str) -> dict:
        path = self.manifest_path(table)
        if not path.exists():
            return {"table": table, "partitions": {}}
        return json.loads(path.read_text())

    def partitions(self, table: str) -> dict[str, Path]:
        """Published ds → folder of its Parquet files, oldest first."""
        parts = self.manifest(table)["partitions"]
        return {ds: self.table_dir(table) / entry["path"] for ds, entry in sorted(parts.items())}

    def latest_ds(self, table: str) -> str | None:
        parts = self.partitions(table)
        return max(parts) if parts else None

    @contextlib.contextmanager
    def _lock(self, table: str):
        self.table_dir(table).mkdir(parents=True, exist_ok=True)
        with open(self.table_dir(table) / "_manifest.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def commit(self, table: str, ds: str, staged: Path, *, rows: int, retain: int, run_id: str) -> Path:
        """Publish the Parquet files in ``staged`` as partition ``ds`` of ``table``.

        The files are copied into an immutable ``run=`` folder, then the manifest is switched
        atomically. Until the switch, readers keep seeing the previous partition. Partitions
        beyond the newest ``retain`` and superseded runs are removed after the switch.
        """
        relative = Path(f"ds={ds}") / f"run={run_id}"
        target = self.table_dir(table) / relative
        target.mkdir(parents=True, exist_ok=False)
        for file in sorted(staged.glob("*.parquet")):
            shutil.copy2(file, target / file.name)
        with self._lock(table):
            manifest = self.manifest(table)
            manifest["partitions"][ds] = {
                "path": str(relative),
                "rows": rows,
                "run_id": run_id,
                "committed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            dropped = sorted(manifest["partitions"])[:-retain] if retain > 0 else []
            for old in dropped:
                del manifest["partitions"][old]
            atomic_write_text(self.manifest_path(table), json.dumps(manifest, indent=2, sort_keys=True))
        self._remove_unreferenced(table)
        return target

    def _remove_unreferenced(self, table: str) -> None:
        keep = {self.table_dir(table) / e["path"] for e in self.manifest(table)["partitions"].values()}
        for ds_dir in self.table_dir(table).glob("ds=*"):
            for run_dir in ds_dir.glob("run=*"):
                if run_dir not in keep:
                    shutil.rmtree(run_dir, ignore_errors=True)
            if not any(ds_dir.iterdir()):
                ds_dir.rmdir()


@dataclass(frozen=True)
class ModelStore:
    """Folders of the model registry: ``<models>/siglip/<version>/`` plus ``registry.json``."""

    root: Path

    @classmethod
    def at(cls, location: str | os.PathLike) -> "ModelStore":
        text = str(location)
        if "://" in text:
            raise NotImplementedError(f"models location {text}: only local directories are supported so far")
        return cls(Path(text))

    def version_dir(self, version: str) -> Path:
        return self.root / "siglip" / version

    def registry_path(self) -> Path:
        return self.root / "registry.json"

    def checkpoint_dir(self, version: str) -> Path:
        """Training checkpoints of a version still being trained (removed once it is saved)."""
        return self.root / "checkpoints" / version
