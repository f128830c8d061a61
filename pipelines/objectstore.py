"""Model folders on S3 (or any S3-compatible store: MinIO, moto): fetched once into a local cache.

``local_model_dir("s3://bucket/models/siglip/v1")`` downloads the folder the first time a process
(a Spark executor, a trainer) needs it, checks every file against the listing (its size, and its
MD5 where the ETag is one, i.e. for objects not uploaded in parts), records size and SHA-256 of
each file in ``.lookalike-files.json``, and moves the folder into place with one rename, so
concurrent workers on a host never load a half-copied model. A cached copy whose files no longer
match that record is fetched again. The endpoint comes from boto3's usual settings
(``AWS_ENDPOINT_URL``, credentials, region).

Every S3 client of Lookalike — boto3's and pyarrow's — comes from :func:`s3_client` and
:func:`s3_filesystem`: the SDKs' *standard* retry mode (500, 503 SlowDown, throttling, lost and
reset connections retried with exponential backoff and jitter), ``AWS_MAX_ATTEMPTS`` attempts per
request (default 10), and timeouts, so a flaky store costs a few retries, not the night.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from lookalike.atomic import atomic_path
from lookalike.errors import LookalikeError

log = logging.getLogger(__name__)

CACHE_ENV = "LOOKALIKE_CACHE_DIR"  # not a config key: a per-host setting of the workers
MAX_ATTEMPTS = 10  # per S3 request, retries included; AWS_MAX_ATTEMPTS overrides it


def _max_attempts() -> int:
    return int(os.environ.get("AWS_MAX_ATTEMPTS") or MAX_ATTEMPTS)


def endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def s3_client():
    """A boto3 S3 client with standard retries and timeouts (endpoint and credentials: the usual AWS settings)."""
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.client("s3", config=BotoConfig(retries={"mode": "standard", "max_attempts": _max_attempts()},
                                                connect_timeout=10, read_timeout=60))


def s3_filesystem():
    """pyarrow's S3 filesystem (ranged GETs of Parquet files) with the same endpoint and retries."""
    import pyarrow.fs

    kwargs, url = {}, endpoint()
    if url:
        scheme, _, host = url.partition("://")
        kwargs = {"endpoint_override": host, "scheme": scheme}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return pyarrow.fs.S3FileSystem(region=region, connect_timeout=10, request_timeout=60,
                                   retry_strategy=pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=_max_attempts()),
                                   **kwargs)


def split_s3(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise LookalikeError(f"{uri} is not an s3:// URI")
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    return bucket, prefix.rstrip("/")


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lookalike")


MANIFEST = ".lookalike-files.json"


def _digests(path: Path) -> tuple[str, str]:
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


def _cache_is_intact(target: Path) -> bool:
    manifest = target / MANIFEST
    if not manifest.exists():
        return False
    files = json.loads(manifest.read_text())["files"]
    return all((target / rel).is_file() and (target / rel).stat().st_size == f["size"] for rel, f in files.items())


def local_model_dir(uri: str) -> Path:
    """A local copy of the model folder at ``uri`` (returned as is when already local)."""
    if not uri.startswith("s3://"):
        return Path(uri)
    bucket, prefix = split_s3(uri)
    target = cache_root() / "models" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    if (target / "config.json").exists():
        if _cache_is_intact(target):
            return target
        log.warning("cached copy of %s at %s does not match its record: fetching it again", uri, target)
        shutil.rmtree(target, ignore_errors=True)
    client = s3_client()
    objects = [o for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
               for o in page.get("Contents", [])]
    if not any(o["Key"].endswith("/config.json") for o in objects):
        raise LookalikeError(f"{uri} holds no Hugging Face model folder (no config.json)")
    record = {}
    with atomic_path(target, first_wins=True) as staging:  # another worker on this host may finish first
        for obj in objects:
            relative = obj["Key"][len(prefix) + 1:]
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, obj["Key"], str(path))
            md5, sha = _digests(path)
            etag = obj.get("ETag", "").strip('"')
            if path.stat().st_size != obj["Size"] or ("-" not in etag and etag and etag != md5):
                raise LookalikeError(f"download of s3://{bucket}/{obj['Key']} does not match the object "
                                     f"(size or MD5 differs): retry, or check the bucket")
            record[relative] = {"size": obj["Size"], "sha256": sha, "etag": etag}
        (staging / MANIFEST).write_text(json.dumps({"uri": uri, "files": record}, indent=2, sort_keys=True))
    return target


def upload_dir(folder: Path, uri: str) -> None:
    """Upload a local folder to ``uri`` (used to publish a model; files keep relative paths)."""
    bucket, prefix = split_s3(uri)
    client = s3_client()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
