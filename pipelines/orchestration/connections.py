"""Credentials inside Airflow: the listings database from an Airflow Connection (``airflow.source_conn_id``,
default ``lookalike_source``), the object store from an AWS connection (``airflow.aws_conn_id``,
default ``aws_default``) and the online stores from theirs (``serving.postgres.conn_id``, default
``lookalike_online``; ``serving.redis.conn_id``, default ``lookalike_redis``), so secrets backends, ``AIRFLOW_CONN_*`` variables and the UI all work,
and every secret found is registered with Airflow's secret masker.

A connection that is not defined leaves the config (``source.url``) and the usual ``AWS_*``
variables in charge, as outside Airflow. The database connection goes through its provider's
hook (``sqlalchemy_url`` of the common-sql ``DbApiHook``: PostgreSQL with the postgres provider,
any other SQLAlchemy-backed provider the same way); the AWS connection is read with the layout
the Amazon provider documents (login = access key id, password = secret access key, extra
``endpoint_url``, ``region_name``, ``aws_session_token``).
"""
from __future__ import annotations

import logging
import os
from typing import Mapping

from lookalike.config import ConfigError, load_config, redact_url

log = logging.getLogger("lookalike")

AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def _connection(conn_id: str):
    """The Airflow Connection ``conn_id``, or None when it is not defined (or outside a task)."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return Connection.get(conn_id)  # Airflow masks its password and secret extras itself
    except AirflowNotFoundException:
        return None


def source_url(conn) -> str:
    """The SQLAlchemy URL of a database Connection, through its provider's hook."""
    try:
        hook = conn.get_hook()
        url = hook.sqlalchemy_url
    except (ImportError, NotImplementedError, AttributeError) as exc:
        raise ConfigError(f"Airflow connection {conn.conn_id!r} (type {conn.conn_type!r}) gives no SQLAlchemy URL: "
                          f"{exc.__class__.__name__}: {exc}. Use a SQLAlchemy-backed connection type (postgres, "
                          f"mysql, …) with its provider installed, or remove the connection to use source.url") from None
    return url.render_as_string(hide_password=False)


def aws_environ(conn) -> dict[str, str]:
    """boto3's variables from an AWS Connection."""
    extra = conn.extra_dejson or {}
    env = {"AWS_ACCESS_KEY_ID": conn.login, "AWS_SECRET_ACCESS_KEY": conn.password,
           "AWS_SESSION_TOKEN": extra.get("aws_session_token"),
           "AWS_ENDPOINT_URL": extra.get("endpoint_url") or (extra.get("service_config") or {}).get("s3", {}).get(
               "endpoint_url"),
           "AWS_DEFAULT_REGION": extra.get("region_name")}
    return {name: str(value) for name, value in env.items() if value}


def online_url(conn, sink: str) -> str:
    """The URL of an online store's Connection: a libpq URL through the postgres provider's hook, or a
    redis:// URL from the fields the Redis provider documents (host, port, login, password, extra ``db``
    and ``ssl``)."""
    if sink == "postgres":
        from sqlalchemy.engine import make_url

        return make_url(source_url(conn)).set(drivername="postgresql").render_as_string(hide_password=False)
    from urllib.parse import quote

    extra = conn.extra_dejson or {}
    auth = f"{quote(conn.login or '', safe='')}:{quote(conn.password, safe='')}@" if conn.password else ""
    scheme = "rediss" if str(extra.get("ssl", "")).lower() in ("1", "true", "yes") else "redis"
    return f"{scheme}://{auth}{conn.host or 'localhost'}:{conn.port or 6379}/{extra.get('db', 0)}"


def mask_url(url: str) -> None:
    """Register a URL's password, and the URL, with Airflow's secret masker."""
    from airflow.sdk.log import mask_secret
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        password = make_url(url).password
    except ArgumentError:
        password = None
    if password:
        mask_secret(password)
        mask_secret(url)


def mask_secrets(source_url: str, environ: Mapping[str, str]) -> None:
    """Register every credential this task can see with Airflow's secret masker: the source
    URL's password (and the URL) and the object store's secrets in ``environ``."""
    from airflow.sdk.log import mask_secret

    mask_url(source_url)
    for name in SECRET_ENV:
        if environ.get(name):
            mask_secret(environ[name])


def airflow_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with the source URL and the AWS credentials of the configured Connections."""
    cfg = load_config(environ=environ)
    out = dict(environ)
    url = cfg.source.url
    source = _connection(cfg.airflow.source_conn_id) if cfg.airflow.source_conn_id else None
    if source is not None:
        url = out["LOOKALIKE_SOURCE__URL"] = source_url(source)
        log.info("source: Airflow connection %r (%s)", source.conn_id, redact_url(url))
    aws = _connection(cfg.airflow.aws_conn_id) if cfg.airflow.aws_conn_id else None
    if aws is not None:
        out.update(aws_environ(aws))
        log.info("object store: Airflow connection %r", aws.conn_id)
    for sink in cfg.serving.sink_names:  # the online stores the hand-off writes to
        settings = getattr(cfg.serving, sink)
        conn = _connection(settings.conn_id) if settings.conn_id else None
        if conn is not None:
            out[f"LOOKALIKE_SERVING__{sink.upper()}__URL"] = online_url(conn, sink)
            log.info("online store %s: Airflow connection %r", sink, conn.conn_id)
        mask_url(out.get(f"LOOKALIKE_SERVING__{sink.upper()}__URL") or settings.url)
    mask_secrets(url, out)
    return out


def apply_to_process(environ: Mapping[str, str]) -> None:
    """Give this task's process the object store's credentials (boto3 reads them from os.environ)."""
    for name in AWS_ENV:
        if environ.get(name):
            os.environ[name] = environ[name]
