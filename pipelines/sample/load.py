"""Put a sample marketplace where production data lives: any SQL database, an S3 image store.

``lookalike sample-data --load-into URL --upload-images s3://…`` uses these to seed the
docker-compose stack (PostgreSQL + MinIO) and the real-service tests. The tables are created
with the source contract's DDL (``SCHEMA_SQL``, portable SQL) and filled in batches; timestamps
go in as timestamps, not text.
"""
from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

from lookalike.errors import LookalikeError
from lookalike.sample.marketplace import SCHEMA_SQL

TIMESTAMPS = {"created_at", "updated_at", "ts"}


def load_database(sample_dir: Path, url: str, *, batch: int = 5000) -> dict[str, int]:
    """Copy ``listings`` and ``interactions`` of the sample into ``url`` (replacing them); returns row counts."""
    source = Path(sample_dir) / "marketplace.db"
    if not source.is_file():
        raise LookalikeError(f"{source} does not exist: run `lookalike sample-data --out {sample_dir}` first")
    engine = sa.create_engine(url)
    counts = {}
    try:
        with engine.begin() as con, sqlite3.connect(source) as src:
            con.execute(sa.text("drop table if exists interactions"))
            con.execute(sa.text("drop table if exists listings"))
            for statement in filter(str.strip, SCHEMA_SQL.split(";")):
                con.execute(sa.text(statement))
            for table in ("listings", "interactions"):
                cursor = src.execute(f"select * from {table}")
                columns = [d[0] for d in cursor.description]
                insert = sa.text(f"insert into {table} ({', '.join(columns)}) "
                                 f"values ({', '.join(':' + c for c in columns)})")
                counts[table] = 0
                while rows := cursor.fetchmany(batch):
                    con.execute(insert, [{c: datetime.fromisoformat(v) if c in TIMESTAMPS and v else v
                                          for c, v in zip(columns, row)} for row in rows])
                    counts[table] += len(rows)
    except sa.exc.SQLAlchemyError as exc:
        raise LookalikeError(f"loading the sample into {engine.url.render_as_string(hide_password=True)} failed: "
                             f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}") from None
    finally:
        engine.dispose()
    return counts


def upload_images(images_dir: Path, uri: str, *, threads: int = 16) -> int:
    """Upload every file under ``images_dir`` to ``s3://bucket/prefix`` with the same relative keys."""
    from lookalike.objectstore import s3_client, split_s3

    bucket, prefix = split_s3(uri)
    client = s3_client()
    files = [p for p in sorted(Path(images_dir).rglob("*")) if p.is_file()]

    def put(path: Path) -> None:
        key = path.relative_to(images_dir).as_posix()
        client.upload_file(str(path), bucket, f"{prefix}/{key}" if prefix else key)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, files))
    return len(files)
