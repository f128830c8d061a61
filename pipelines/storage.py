"""Where everything lives: every path of the warehouse, the work area and the model store is built
here from (table, ds, run), or in ``workarea.py`` (the work area's names and its default root),
nowhere else. Inside a work-area folder, the stage that writes it names its own files.

Warehouse layout (a local directory or ``s3://bucket/prefix``)::

    <warehouse>/<table>/ds=<ds>/run=<run_id>/    an immutable published partition
    <warehouse>/_manifest.json                   which run each (table, ds) points to: the commit point
    <warehouse>/_runs/<ds>.json                  the record of the run that published ds
    <warehouse>/_runs/<ds>.handoff-<feed>.json   what the online stores were handed for ds (items, users)

The work area (``work_dir``; ``<warehouse>/_work`` by default for a local warehouse) is a local
or shared-volume directory private to the runs: ``<work>/ds=<ds>/<name>/``, replaced on rerun; every ``name`` is listed in
``workarea.py`` with the stage that writes it and those that read it.

Publishing (:class:`Publication`) writes each table's files under a fresh ``run=`` prefix, then
switches the manifest in one step: a rename under a lock on local disk, a conditional PUT
(``If-Match`` on the ETag read, ``If-None-Match: *`` for the first) on S3. Readers go through the
manifest, so they see the old partitions or the new ones, never a mixture, and every table of a
run switches at once. If another run published the same ds in between, the commit is refused
(two runs cannot both win); if another ds was published in between, the manifest is re-read and
the switch retried. Superseded runs, crashed runs' leftovers of the ds and partitions beyond
retention are removed only after the switch.
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import functools
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lookalike import faults, tables
from lookalike.atomic import atomic_path, atomic_write_text
from lookalike.errors import ConfigError, LookalikeError
from lookalike.systems import HYBRID, SIGLIP

log = logging.getLogger(__name__)

PUBLISHED_TABLES = tables.NAMES
MANIFEST = "_manifest.json"
RETIRED_KEPT = 400  # ds values removed by retention, remembered per table in the manifest


def write_parquet(table: pa.Table, path: Path) -> Path:
    """Write one Parquet file atomically (through ``atomic_path``)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f") + "-" + uuid.uuid4().hex[:6]


class ManifestConflict(LookalikeError):
    """The manifest changed since it was read (another commit won the race)."""


class PublishConflict(LookalikeError):
    """Another run published the same ds while this one was writing; this run published nothing."""


def _empty_manifest() -> dict:
    return {"format": 2, "generation": 0, "tables": {}}


class LocalObjects:
    """Warehouse objects in a local directory; the manifest switch is a rename under a file lock."""

    def __init__(self, root: Path):
        import pyarrow.fs

        self.root, self.fs = root, pyarrow.fs.LocalFileSystem()

    def path(self, key: str) -> str:
        return str(self.root / key)

    def display(self, key: str = "") -> str:
        return str(self.root / key) if key else str(self.root)

    def put_file(self, local: Path, key: str) -> None:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(local, target)

    def put_text(self, key: str, text: str) -> None:
        atomic_write_text(self.root / key, text)

    def get_text(self, key: str) -> str | None:
        path = self.root / key
        return path.read_text() if path.exists() else None

    def read_manifest(self) -> tuple[dict, object]:
        text = self.get_text(MANIFEST)
        manifest = json.loads(text) if text else _empty_manifest()
        return manifest, manifest["generation"]

    def write_manifest(self, manifest: dict, token) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "_manifest.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.read_manifest()[1] != token:
                raise ManifestConflict("the manifest changed since it was read")
            for stale in self.root.glob(f".{MANIFEST}.*.tmp"):  # a switch killed half-way (we hold the lock)
                stale.unlink(missing_ok=True)
            atomic_write_text(self.root / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True),
                              before_rename=lambda: faults.point("publish.during_switch"))

    def children(self, prefix: str) -> list[str]:
        folder = self.root / prefix
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.root / prefix, ignore_errors=True)
        parent = (self.root / prefix).parent
        with contextlib.suppress(OSError):  # drop the ds= folder once its last run is gone
            parent.rmdir()


class S3Objects:
    """Warehouse objects under ``s3://bucket/prefix``; the manifest switch is a conditional PUT.

    The endpoint and credentials come from the usual AWS settings (``AWS_ENDPOINT_URL``, …), for
    boto3 and for pyarrow's S3 filesystem (which reads the Parquet files with ranged GETs).
    """

    def __init__(self, uri: str):
        from lookalike.objectstore import s3_client, s3_filesystem, split_s3

        self.uri = uri.rstrip("/")
        self.bucket, self.prefix = split_s3(uri)
        self.client = s3_client()
        self.fs = s3_filesystem()

    def key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def path(self, key: str) -> str:
        return f"{self.bucket}/{self.key(key)}"

    def display(self, key: str = "") -> str:
        return f"{self.uri}/{key}" if key else self.uri

    def put_file(self, local: Path, key: str) -> None:
        self.client.upload_file(str(local), self.bucket, self.key(key))

    def put_text(self, key: str, text: str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.key(key), Body=text.encode())

    def get_text(self, key: str) -> str | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key(key))["Body"].read().decode()
        except self.client.exceptions.NoSuchKey:
            return None

    def read_manifest(self) -> tuple[dict, object]:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self.key(MANIFEST))
        except self.client.exceptions.NoSuchKey:
            return _empty_manifest(), None
        return json.loads(obj["Body"].read()), obj["ETag"]

    def write_manifest(self, manifest: dict, token) -> None:
        from botocore.exceptions import ClientError

        condition = {"IfMatch": token} if token else {"IfNoneMatch": "*"}
        faults.point("publish.during_switch")
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key(MANIFEST), ContentType="application/json",
                                   Body=json.dumps(manifest, indent=2, sort_keys=True).encode(), **condition)
        except ClientError as exc:
            error = exc.response.get("Error", {}).get("Code", "")
            if error in ("PreconditionFailed", "ConditionalRequestConflict") or \
                    exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412):
                raise ManifestConflict("the manifest changed since it was read") from None
            raise

    def children(self, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.key(prefix).rstrip("/") + "/", Delimiter="/")
        return sorted(p["Prefix"].rstrip("/").rsplit("/", 1)[-1] for page in pages for p in page.get("CommonPrefixes", []))

    def delete_prefix(self, prefix: str) -> None:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.key(prefix).rstrip("/") + "/")
        keys = [{"Key": o["Key"]} for page in pages for o in page.get("Contents", [])]
        for start in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys[start:start + 1000]})


@functools.lru_cache(maxsize=8)
def _objects(location: str, endpoint: str | None):  # endpoint: a new S3 endpoint gets a new client
    if location.startswith("s3://"):
        return S3Objects(location)
    if "://" in location:
        raise LookalikeError(f"warehouse {location}: use a local directory or an s3:// URI")
    return LocalObjects(Path(location))


def partition_key(table: str, ds: str, run_id: str) -> str:
    """``<table>/ds=<ds>/run=<run_id>``: an immutable published partition, under the warehouse."""
    return f"{table}/ds={ds}/run={run_id}"


@dataclass(frozen=True)
class Warehouse:
    location: str  # a directory or s3://bucket/prefix: the published tables
    work_root: Path  # the runs' work area (local or a shared volume)

    @classmethod
    def at(cls, location: str | os.PathLike, work: str | os.PathLike | None = None) -> "Warehouse":
        text = str(location)
        if work in (None, ""):
            from lookalike.workarea import default_root

            work = default_root(text, Path.cwd())
        return cls(text, Path(work))

    @classmethod
    def of(cls, cfg) -> "Warehouse":
        return cls.at(cfg.warehouse, cfg.work_dir)

    @property
    def objects(self):
        from lookalike.objectstore import endpoint

        return _objects(self.location, endpoint())

    @property
    def fs(self):
        return self.objects.fs

    def display(self, key: str = "") -> str:
        return self.objects.display(key)

    def partition_location(self, table: str, ds: str, run_id: str) -> str:
        """Where a published partition's files are: a directory, or an s3:// prefix."""
        return self.display(partition_key(table, ds, run_id))

    # ---- the work area of one ds (private to the run; its outputs are named in workarea.py) ----
    def work(self, ds: str, name: str) -> Path:
        from lookalike.workarea import checked

        return self.work_root / f"ds={ds}" / checked(name)

    def work_days(self) -> list[str]:
        """Every ds with a work area, oldest first."""
        return sorted(p.name.removeprefix("ds=") for p in self.work_root.glob("ds=*") if p.is_dir())

    def fresh_work(self, ds: str, name: str) -> Path:
        """An empty work folder for ``name``: a rerun replaces, never appends."""
        path = self.work(ds, name)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    # ---- published tables ----
    def manifest(self) -> dict:
        return self.objects.read_manifest()[0]

    def entries(self, table: str) -> dict[str, dict]:
        """Published ds → manifest entry (path, files, rows, run_id, committed_at), oldest first."""
        return dict(sorted(self.manifest()["tables"].get(table, {}).items()))

    def partitions(self, table: str) -> dict[str, str]:
        """Published ds → location of its run folder (for display)."""
        return {ds: self.display(f"{table}/{e['path']}") for ds, e in self.entries(table).items()}

    def partition_files(self, table: str, ds: str | None = None) -> list[str]:
        """Paths (in :attr:`fs`) of the Parquet files of every published partition, or of ``ds``'s."""
        return [self.objects.path(f"{table}/{e['path']}/{name}") for d, e in self.entries(table).items()
                if ds in (None, d) for name in e["files"]]

    def read_partition(self, table: str, ds: str, **kwargs) -> pa.Table:
        entry = self.entries(table).get(ds)
        if entry is None or not entry["files"]:
            raise LookalikeError(f"{table} has no published partition ds={ds}")
        return self.read_entry(table, entry, **kwargs)

    def partition_schema(self, table: str, ds: str) -> pa.Schema:
        """The schema of a published partition as written (an older release may have written fewer columns)."""
        entry = self.entries(table).get(ds)
        if entry is None or not entry["files"]:
            raise LookalikeError(f"{table} has no published partition ds={ds}")
        return pq.read_schema(self.objects.path(f"{table}/{entry['path']}/{entry['files'][0]}"), filesystem=self.fs)

    def read_entry(self, table: str, entry: dict, **kwargs) -> pa.Table:
        """The files of one manifest entry (a run's partition), as read from a manifest already in hand."""
        files = [self.objects.path(f"{table}/{entry['path']}/{name}") for name in entry["files"]]
        return pq.read_table(files, filesystem=self.fs, partitioning=None, **kwargs)

    def retired(self, table: str) -> list[str]:
        """The ds values of ``table`` removed by retention (the newest RETIRED_KEPT)."""
        return list(self.manifest().get("retired", {}).get(table, []))

    def latest_ds(self, table: str) -> str | None:
        entries = self.entries(table)
        return max(entries) if entries else None

    def run_record(self, ds: str) -> dict | None:
        """The record of the run that published ``ds``, with ``serving``: what each online store was
        handed for it, per feed (the hand-off records, written after the publish)."""
        text = self.objects.get_text(f"_runs/{ds}.json")
        record = json.loads(text) if text else None
        handoffs = {feed: json.loads(found) for feed in ("items", "users", "intraday")
                    if (found := self.objects.get_text(f"_runs/{ds}.handoff-{feed}.json"))}
        if handoffs:
            record = {**(record or {"ds": ds}), "serving": handoffs}
        return record

    def write_handoff_record(self, ds: str, feed: str, record: dict) -> None:
        """What the hand-off of ``feed``'s run of ``ds`` left each store serving (``_runs/<ds>.handoff-<feed>.json``)."""
        self.objects.put_text(f"_runs/{ds}.handoff-{feed}.json", json.dumps(record, indent=2, sort_keys=True))

    def begin(self, ds: str, run_id: str | None = None) -> "Publication":
        return Publication(self, ds, run_id or new_run_id())


class Publication:
    """One run's publish of partition ``ds``: add tables, then commit them all in one switch."""

    def __init__(self, wh: Warehouse, ds: str, run_id: str):
        self.wh, self.ds, self.run_id = wh, ds, run_id
        tables = wh.manifest()["tables"]
        self.expected = {t: parts.get(ds, {}).get("run_id") for t, parts in tables.items()}
        self.added: dict[str, dict] = {}

    def prefix(self, table: str, run_id: str | None = None) -> str:
        return partition_key(table, self.ds, run_id or self.run_id)

    def add(self, table: str, files: list[Path], rows: int, **extra) -> None:
        """Write ``files`` under this run's immutable prefix of ``table`` (invisible until commit); ``extra``
        goes into its manifest entry (an intraday hour's ``as_of``)."""
        for file in files:
            self.wh.objects.put_file(file, f"{self.prefix(table)}/{file.name}")
        self.added[table] = {"path": f"ds={self.ds}/run={self.run_id}", "files": sorted(f.name for f in files),
                             "rows": rows, "run_id": self.run_id, **extra}

    def abort(self) -> None:
        for table in self.added:
            self.wh.objects.delete_prefix(self.prefix(table))

    def commit(self, *, retain: int, record: dict | None = None, attempts: int = 20) -> dict:
        """Switch the manifest to this run's partitions; returns the tables' manifest entries."""
        objects = self.wh.objects
        for _ in range(attempts):
            manifest, token = objects.read_manifest()
            current = {t: manifest["tables"].get(t, {}).get(self.ds, {}).get("run_id") for t in self.added}
            if all(run == self.run_id for run in current.values()):
                # Our conditional PUT landed but its response was lost (a reset connection), so the
                # SDK's retry of it was refused: the switch is done.
                updated, dropped = manifest, []
                break
            if any(current[t] != self.expected.get(t) for t in self.added):
                self.abort()
                raise PublishConflict(
                    f"another run published ds={self.ds} while run {self.run_id} was writing "
                    f"(now {sorted(set(current.values()) - {None})}); this run's files were removed "
                    "and the other run's partition stands")
            updated = copy.deepcopy(manifest)
            updated["generation"] = manifest["generation"] + 1
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            dropped: list[tuple[str, str]] = []
            for table, entry in self.added.items():
                parts = updated["tables"].setdefault(table, {})
                parts[self.ds] = {**entry, "committed_at": now}
                if retain > 0:
                    dropped += [(table, old) for old in sorted(parts)[:-retain]]
            for table, old in dropped:
                del updated["tables"][table][old]
                retired = updated.setdefault("retired", {}).setdefault(table, [])
                retired[:] = sorted(set(retired) | {old})[-RETIRED_KEPT:]  # for engines' partition drops
            try:
                objects.write_manifest(updated, token)
            except ManifestConflict:
                continue  # another ds was committed meanwhile: merge into the newer manifest
            break
        else:
            raise ManifestConflict(f"could not switch the manifest for ds={self.ds} after {attempts} attempts")
        faults.point("publish.after_switch")
        if record is not None:
            objects.put_text(f"_runs/{self.ds}.json", json.dumps(record, indent=2, sort_keys=True))
        self._clean(dropped)
        return {t: updated["tables"][t].get(self.ds) for t in self.added}

    def _clean(self, dropped: list[tuple[str, str]]) -> None:
        """After the switch: other runs of this ds (superseded, or leftovers of a crash: any run
        still writing now would lose its commit) and partitions beyond retention."""
        objects = self.wh.objects
        manifest = objects.read_manifest()[0]
        for table in self.added:
            for run in objects.children(f"{table}/ds={self.ds}"):
                if run < f"run={self.run_id}":  # run ids sort by start time; a later run is not ours to remove
                    objects.delete_prefix(f"{table}/ds={self.ds}/{run}")
            live = manifest["tables"].get(table, {})  # partitions retired by a commit whose clean-up was lost
            retired = {old for old in manifest.get("retired", {}).get(table, []) if old not in live}
            left = {(table, folder.removeprefix("ds=")) for folder in objects.children(table)}
            dropped = [*dropped, *sorted(({(table, old) for old in retired} & left) - set(dropped))]
        for table, old in dropped:
            for run in objects.children(f"{table}/ds={old}"):
                objects.delete_prefix(f"{table}/ds={old}/{run}")
            log.info("publish: %s ds=%s removed (beyond retention)", table, old)


@dataclass(frozen=True)
class ModelStore:
    """Folders of the model registry: ``<models>/siglip/<version>/``, the image baseline and hybrids
    (``pipelines/serving.py``), plus ``registry.json``."""

    root: Path

    @classmethod
    def at(cls, location: str | os.PathLike) -> "ModelStore":
        text = str(location)
        if "://" in text:
            raise ConfigError(f"models={text}: the model registry must be a local or shared-volume directory "
                              "(model checkpoints can still be loaded from s3:// through model.init)")
        return cls(Path(text))

    def version_dir(self, version: str) -> Path:
        return self.root / SIGLIP / version

    def baseline_dir(self, version: str) -> Path:
        return self.root / "image-baseline" / version

    def hybrid_dir(self, version: str) -> Path:
        return self.root / HYBRID / version

    def registry_path(self) -> Path:
        return self.root / "registry.json"

    def checkpoint_dir(self, version: str) -> Path:
        """Training checkpoints of a version still being trained (removed once it is saved)."""
        return self.root / "checkpoints" / version
