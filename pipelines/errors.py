"""The error taxonomy: every failure is bad input, transient, or a bug, and one classifier says which.

- *bad input or a failed check* (:class:`LookalikeError` and its subclasses, a missing file named
  by the user, credentials the object store rejects): one clear line, exit status 2, no retry —
  running the same thing again cannot help;
- *transient* (:class:`TransientError`, a lost or refused connection, an S3 5xx or SlowDown, a
  commit race lost after its own retries): exit status 75 (``EX_TEMPFAIL``), retried with backoff
  (boto3's standard retry mode inside a call, the DAG's exponential task retries around it);
- anything else is a *bug*: the traceback is kept, exit status 1, and the DAG retries it too.

Tasks (``lookalike.orchestration.tasks``), jobs (``lookalike.orchestration.jobs``), the job launcher and the CLI all ask
:func:`classify`, so a given failure is treated the same wherever it surfaces.
"""
from __future__ import annotations

import socket

BAD_INPUT, TRANSIENT, BUG = "bad input", "transient", "bug"
EXIT_STATUS = {BAD_INPUT: 2, TRANSIENT: 75, BUG: 1}

# S3 error codes that say "try again later"; any 5xx status is transient too.
_S3_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                       "InternalError", "ServiceUnavailable", "OperationAborted"}
# S3 error codes that retrying cannot fix: wrong credentials, wrong bucket.
_S3_BAD_INPUT_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket",
                       "AllAccessDisabled", "InvalidBucketName", "ExpiredToken"}
# How pyarrow's S3 filesystem words the same transient failures.
_ARROW_TRANSIENT_MARKS = ("NETWORK_CONNECTION", "SLOW_DOWN", "SERVICE_UNAVAILABLE", "INTERNAL_FAILURE",
                          "REQUEST_TIMEOUT", "THROTTLING", "HTTP response code: 5")


class LookalikeError(Exception):
    """Bad input, a failed check or a missing prerequisite; reported as one line, never a traceback."""


class ConfigError(LookalikeError):
    """A configuration file, key or override that cannot be used; the message names the key."""


class TransientError(Exception):
    """A failure that retrying later can fix: a lost connection, an overloaded service, a lost race."""


def classify(exc: BaseException) -> str:
    """``BAD_INPUT``, ``TRANSIENT`` or ``BUG`` for ``exc`` (its cause chain is consulted too)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        kind = _classify_one(exc)
        if kind is not None:
            return kind
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return BUG


def _classify_one(exc: BaseException) -> str | None:
    if isinstance(exc, (LookalikeError, FileNotFoundError)):  # a file the user or an earlier stage should have made
        return BAD_INPUT
    if isinstance(exc, TransientError):
        return TRANSIENT
    kind = _classify_botocore(exc)
    if kind is not None:
        return kind
    if _is_sqlalchemy_disconnect(exc):
        return TRANSIENT
    if isinstance(exc, (ConnectionError, TimeoutError, socket.gaierror)):
        return TRANSIENT
    if isinstance(exc, OSError) and "AWS Error" in str(exc):  # pyarrow's S3 filesystem, after its own retries
        return TRANSIENT if any(mark in str(exc) for mark in _ARROW_TRANSIENT_MARKS) else None
    return None


def _classify_botocore(exc: BaseException) -> str | None:
    try:
        from botocore.exceptions import ClientError, ConnectionError as BotoConnectionError, HTTPClientError
        from botocore.exceptions import NoCredentialsError
    except ImportError:  # pragma: no cover - boto3 is a dependency
        return None
    if isinstance(exc, (BotoConnectionError, HTTPClientError)):
        return TRANSIENT
    if isinstance(exc, NoCredentialsError):
        return BAD_INPUT
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if code in _S3_TRANSIENT_CODES or status >= 500:
            return TRANSIENT
        if code in _S3_BAD_INPUT_CODES or status in (401, 403):
            return BAD_INPUT
    return None


def _is_sqlalchemy_disconnect(exc: BaseException) -> bool:
    try:
        import sqlalchemy.exc as sa_exc
    except ImportError:  # pragma: no cover - sqlalchemy is a dependency
        return False
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (sa_exc.DisconnectionError, sa_exc.TimeoutError))


def describe(exc: BaseException) -> str:
    """One line for the operator: the error's class and the first line of its message."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def report(prog: str, exc: BaseException) -> int:
    """For a command line: print ``exc`` as one line to stderr and return its exit status; a bug
    is re-raised, traceback and all."""
    import sys

    kind = classify(exc)
    if kind == BUG:
        raise exc
    if kind == BAD_INPUT:
        print(f"{prog}: error: {exc}", file=sys.stderr)
    else:
        print(f"{prog}: transient error, retry later: {describe(exc)}", file=sys.stderr)
    return EXIT_STATUS[kind]
