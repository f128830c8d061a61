"""Model folders on S3 (or any S3-compatible store: MinIO, moto): fetched once into a local cache.

``local_model_dir("s3://bucket/models/siglip/v1")`` downloads the folder the first time a process
(a Spark executor, a trainer) needs it, verifies every file's size against the listing, and moves
it into place with one rename, so concurrent workers on a host never load a half-copied model.
The endpoint comes from boto3's usual settings (``AWS_ENDPOINT_URL``, credentials, region).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

from pipelines.errors import LookalikeError

CACHE_ENV = "LOOKALIKE_CACHE_DIR"  # not a config key: a per-host setting of the workers


def split_s3(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise LookalikeError(f"{uri} is not an s3:// URI")
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    return bucket, prefix.rstrip("/")


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lookalike")


def local_model_dir(uri: str) -> Path:
    """A local copy of the model folder at ``uri`` (returned as is when already local)."""
    if not uri.startswith("s3://"):
        return Path(uri)
    import boto3

    bucket, prefix = split_s3(uri)
    target = cache_root() / "models" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    if (target / "config.json").exists():
        return target
    client = boto3.client("s3")
    objects = [o for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
               for o in page.get("Contents", [])]
    if not any(o["Key"].endswith("/config.json") for o in objects):
        raise LookalikeError(f"{uri} holds no Hugging Face model folder (no config.json)")
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
    for obj in objects:
        relative = obj["Key"][len(prefix) + 1:]
        path = staging / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, obj["Key"], str(path))
        if path.stat().st_size != obj["Size"]:
            raise LookalikeError(f"download of s3://{bucket}/{obj['Key']} is incomplete")
    try:
        staging.rename(target)
    except OSError:  # another worker on this host finished first: use its copy
        shutil.rmtree(staging, ignore_errors=True)
    return target


def upload_dir(folder: Path, uri: str) -> None:
    """Upload a local folder to ``uri`` (used to publish a model; files keep relative paths)."""
    import boto3

    bucket, prefix = split_s3(uri)
    client = boto3.client("s3")
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
