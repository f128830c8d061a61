"""Fetching and decoding photos, the same in this process, in decode processes and in Spark tasks.

A :class:`PhotoTask` names one photo of the store; its :class:`PhotoResult` is the normalised
photo, the reason it was rejected, or *unchanged*: the store still holds the object seen on an
earlier night, whose normalised photo is reused. Fetching is I/O (a stat, or a conditional GET
for a photo seen before) and runs on threads; decoding is CPU work and runs on those threads or
in processes (:class:`Decoders`), or on a cluster (:class:`SparkDecoders`)."""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import sys
import types
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lookalike.config import Config
from lookalike.extract import photos
from lookalike.extract.images import fetch_image, forget_store_layout, prepare_image

log = logging.getLogger(__name__)

FETCH_THREADS = 8  # photos fetched at once, by the extract or by one Spark task
SLICE_TASKS = 128  # photos handed to a decode process or a Spark task at a time
THREAD_TASKS = 64  # photos handed to a fetch thread at a time (fewer when there are few)
# Fewer photos of a chunk to fetch than this are decoded on the fetch threads even with decode
# processes: a night that changed a few percent never pays for starting them.
PROCESS_MIN_PHOTOS = 256


@dataclass(frozen=True)
class PhotoTask:
    key: str  # the listing's image_key in the store
    known: str | None = None  # the object's identity seen on an earlier night; None: read the object
    version: str | None = None  # the source's image_version, when it has the column


@dataclass(frozen=True)
class PhotoResult:
    photo: photos.Photo | None = None  # fetched and normalised
    reason: str | None = None  # why the photo cannot be used
    unchanged: bool = False  # the store holds the object known from an earlier night: reuse its photo


UNCHANGED = PhotoResult(unchanged=True)


@dataclass(frozen=True)
class Download:
    """A photo's bytes, fetched, to decode."""
    key: str
    data: bytes
    identity: str


@dataclass(frozen=True)
class PhotoWork:
    """What fetching and normalising needs, picklable, so that it runs the same everywhere.
    ``fetch`` is the I/O, ``decode`` the CPU work, ``one`` both; calling it with a slice of tasks
    fetches them on FETCH_THREADS threads (an intraday hour's body, a Spark task's)."""

    images: str
    max_bytes: int
    size: int
    max_pixels: int
    min_side: int
    norm: str

    @classmethod
    def of(cls, cfg: Config) -> "PhotoWork":
        ex = cfg.extract
        return cls(cfg.source.images, ex.max_image_bytes, ex.image_size, ex.max_image_pixels, ex.min_image_side,
                   photos.normalisation(ex))

    def unchanged(self, tasks: list[PhotoTask]) -> list[bool]:
        """Per task, whether a directory store still holds the object known from an earlier night,
        checked in this thread: a stat is quicker done here than handed to threads that then
        queue for the GIL (an S3 store's conditional GETs go to the threads instead)."""
        if self.images.startswith("s3://"):
            return [False] * len(tasks)
        return [t.known is not None and fetch_image(self.images, t.key, self.max_bytes, t.known, read=False).unchanged
                for t in tasks]

    def fetch(self, task: PhotoTask) -> PhotoResult | Download:
        fetched = fetch_image(self.images, task.key, self.max_bytes, task.known)
        if fetched.reason:
            return PhotoResult(reason=fetched.reason)
        if fetched.unchanged:
            return UNCHANGED
        identity = f"version:{task.version}" if task.version is not None else fetched.identity
        return Download(task.key, fetched.data, identity)

    def decode(self, download: Download) -> PhotoResult:
        prepared = prepare_image(download.data, size=self.size, max_pixels=self.max_pixels, min_side=self.min_side)
        if prepared.reason:
            return PhotoResult(reason=prepared.reason)
        return PhotoResult(photos.Photo(download.key, f"{self.norm}|{download.identity}", prepared.jpeg,
                                        prepared.width, prepared.height, prepared.sha256))

    def decode_all(self, downloads: list[Download]) -> list[PhotoResult]:
        return [self.decode(d) for d in downloads]

    def fetch_all(self, tasks: list[PhotoTask]) -> list[PhotoResult | Download]:
        return [self.fetch(task) for task in tasks]

    def one(self, task: PhotoTask) -> PhotoResult:
        fetched = self.fetch(task)
        return self.decode(fetched) if isinstance(fetched, Download) else fetched

    def all(self, tasks: list[PhotoTask]) -> list[PhotoResult]:
        return [self.one(task) for task in tasks]

    def __call__(self, tasks: list[PhotoTask]) -> list[PhotoResult]:
        with ThreadPoolExecutor(FETCH_THREADS) as pool:
            return settled(self, tasks, lambda rest: threaded(pool, self.all, rest))


def settled(work: PhotoWork, tasks: list[PhotoTask], rest) -> list[PhotoResult]:
    """The results of ``tasks``: those whose object is unchanged settled here (``PhotoWork.unchanged``),
    the rest by ``rest`` (a list of tasks → their results)."""
    same = work.unchanged(tasks)
    todo = [i for i, s in enumerate(same) if not s]
    results: list[PhotoResult] = [UNCHANGED] * len(tasks)
    for i, result in zip(todo, rest([tasks[i] for i in todo])):
        results[i] = result
    return results


def threaded(pool: ThreadPoolExecutor, body, tasks: list) -> list:
    """``body`` (a list of tasks → a list of results) over ``tasks`` on ``pool``'s threads, a few
    dozen tasks per call: most tasks of a night are a stat or a conditional GET, too short to be
    worth a future each."""
    size = max(1, min(THREAD_TASKS, -(-len(tasks) // (4 * FETCH_THREADS))))
    return [r for part in pool.map(body, [tasks[i:i + size] for i in range(0, len(tasks), size)]) for r in part]


class Decoders:
    """Where photos are fetched and decoded. Fetching is I/O and runs on FETCH_THREADS threads of
    this process (an object store answers in milliseconds; an unchanged photo costs only that).
    Decoding runs on those threads too (Pillow releases the GIL while it decodes and encodes), or,
    with ``extract.decode_processes`` other than 1 and at least PROCESS_MIN_PHOTOS photos of a
    chunk to fetch, in that many processes (0: one per core), spawned rather than forked so that
    nothing of this one (an S3 client, a database connection) is shared with them, started when
    first needed and killed with it."""

    def __init__(self, processes: int):
        self.processes = processes or os.cpu_count() or 1
        forget_store_layout()
        self._threads = ThreadPoolExecutor(FETCH_THREADS)
        self._pool = None
        if self.processes > 1:
            from lookalike.processes import die_with_parent

            self._pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=die_with_parent, initargs=(os.getpid(),))

    def map(self, work: PhotoWork, tasks: list[PhotoTask]) -> list[PhotoResult]:
        return settled(work, tasks, lambda rest: self._fetch_and_decode(work, rest))

    def _fetch_and_decode(self, work: PhotoWork, tasks: list[PhotoTask]) -> list[PhotoResult]:
        if self._pool is None or len(tasks) < PROCESS_MIN_PHOTOS:
            return threaded(self._threads, work.all, tasks)
        results = threaded(self._threads, work.fetch_all, tasks)
        todo = [i for i, fetched in enumerate(results) if isinstance(fetched, Download)]
        size = max(1, min(SLICE_TASKS, -(-len(todo) // self.processes)))
        slices = [[results[i] for i in todo[k:k + size]] for k in range(0, len(todo), size)]
        with _children_skip_main():  # the pool spawns its processes as work is submitted
            decoded = self._pool.map(work.decode_all, slices)
        for i, photo in zip(todo, (r for part in decoded for r in part)):
            results[i] = photo
        return results

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._threads.shutdown(cancel_futures=True)
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
        return False


@contextlib.contextmanager
def _children_skip_main():
    """A process spawned now does not import this process's ``__main__`` first, as
    ``multiprocessing`` otherwise makes it do. Inside an Airflow task ``__main__`` is Airflow's
    own entry point, which fails to import in a child (the task's environment points the
    metadata database at a blocked URL), and every decode process died with it. The decode
    processes need nothing from ``__main__``."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


class SparkDecoders:
    """``Decoders.map`` as Spark tasks on ``spark.master``: each slice of photos one task, the
    photos collected back in order (a catalogue of millions decodes on the cluster's cores; the
    rest of the extract, a stream of chunks, stays here)."""

    def __init__(self, cfg: Config, ds: str, folder: Path):
        from lookalike.spark import ship_package, spark_session

        self.spark = spark_session(cfg, app_name=f"lookalike-extract-{ds}")
        ship_package(self.spark, cfg, folder)

    def map(self, work: PhotoWork, tasks: list[PhotoTask]) -> list[PhotoResult]:
        if not tasks:
            return []
        slices = [tasks[i:i + SLICE_TASKS] for i in range(0, len(tasks), SLICE_TASKS)]
        return [r for part in self.spark.sparkContext.parallelize(slices, len(slices)).map(work).collect()
                for r in part]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def decoders_for(cfg: Config, ds: str, rows: int, folder: Path) -> Decoders | SparkDecoders:
    spark_min = cfg.extract.spark_min_rows
    if spark_min > 0 and rows >= spark_min:
        log.info("extract %s: %d listings staged (extract.spark_min_rows %d): photos fetched and decoded on Spark (%s)",
                 ds, rows, spark_min, cfg.spark.master)
        return SparkDecoders(cfg, ds, folder)
    return Decoders(cfg.extract.decode_processes)
