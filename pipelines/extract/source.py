"""Reading the listings database: the extract templates in ``sql/extract``, streamed in chunks.

The source may hold tens of millions of listings and a long event log, so nothing here reads a
whole result: ``stream_source`` yields ``pandas`` chunks of ``chunk_rows`` rows from a
server-side cursor (SQLAlchemy's ``yield_per``; psycopg names a cursor, SQLite steps its
statement), and each chunk is validated and written before the next is fetched.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from string import Template
from typing import Iterator, Mapping

import pandas as pd
import sqlalchemy as sa

from lookalike.errors import LookalikeError, TransientError
from lookalike.resources import sql_path

SOURCE_CHUNK_ROWS = 20_000  # rows fetched per round trip and validated at once


class ExtractError(LookalikeError):
    """The source cannot be read as the contract says; the message names the table or column."""


def _iso_text(value) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%S")
    return str(value).replace(" ", "T")


def template_text(template: str, sql_dir: Path | None = None, names: Mapping[str, str] | None = None) -> str:
    """The text of one extract template with its ``$name`` placeholders replaced by ``names``
    (the optional columns of the source contract: the column itself, or ``null``)."""
    path = (sql_dir or sql_path("extract")) / template
    if not path.is_file():
        raise ExtractError(f"extract template {path} not found")
    return Template(path.read_text()).safe_substitute(names or {})


def source_columns(url: str, table: str) -> set[str]:
    """The columns the source's ``table`` has (empty when it cannot be inspected: the query that
    follows reports why)."""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return set()
    engine = sa.create_engine(url)
    try:
        return {column["name"] for column in sa.inspect(engine).get_columns(table)}
    except sa.exc.SQLAlchemyError:
        return set()
    finally:
        engine.dispose()


def optional_columns(url: str, table: str, names: tuple[str, ...]) -> dict[str, str]:
    """``$name`` → ``name`` for each optional column the source's table has, else → ``null``."""
    present = source_columns(url, table)
    return {name: name if name in present else "null" for name in names}


def stream_source(url: str, template: str, params: dict, sql_dir: Path | None = None, *,
                  expected: list[str], optional: Mapping[str, str] | None = None,
                  chunk_rows: int = SOURCE_CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """Run one extract template with bound parameters and yield its rows in chunks (at least one,
    empty when the query returns nothing), checked for the ``expected`` columns; timestamps come
    back as ISO text. A connection lost mid-stream is a ``TransientError`` like one never made.
    ``sql_dir``: the templates' folder, by default the shipped ``sql/extract/``. ``optional``:
    the optional columns' placeholders (:func:`optional_columns`); an ``expected`` column among
    them that the template does not return is NULL in every row."""
    path = (sql_dir or sql_path("extract")) / template
    text = template_text(template, sql_dir, optional)
    if url.startswith("sqlite:///"):  # SQLite would silently create an empty database
        db = Path(url.removeprefix("sqlite:///"))
        if not db.is_file():
            raise ExtractError(f"source database {db} does not exist: create the sample with "
                               f"`lookalike sample-data --out {db.parent}` (or `make demo`), or set source.url")
    engine = sa.create_engine(url)
    try:
        with engine.connect() as con:
            result = con.execution_options(yield_per=chunk_rows).execute(sa.text(text), params)
            columns = list(result.keys())
            _check_columns(columns, template, [name for name in expected if name not in (optional or {})])
            missing = [name for name in (optional or {}) if name not in columns]
            empty = True
            for rows in result.partitions(chunk_rows):
                empty = False
                yield _frame(rows, columns, missing)
            if empty:
                yield _frame([], columns, missing)
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        if url.startswith("sqlite"):  # SQLite reports a missing table as an OperationalError
            raise _contract_error(path, engine, exc) from None
        raise TransientError(f"the source {engine.url.render_as_string(hide_password=True)} could not be reached "
                             f"or dropped the connection: {str(exc.orig or exc).splitlines()[0]}") from None
    except sa.exc.SQLAlchemyError as exc:
        raise _contract_error(path, engine, exc) from None
    finally:
        engine.dispose()


def read_source(url: str, template: str, params: dict, sql_dir: Path | None = None,
                expected: list[str] = ()) -> pd.DataFrame:
    """The whole result of one template (for small lookups and tests; the stages stream)."""
    return pd.concat(list(stream_source(url, template, params, sql_dir, expected=list(expected))), ignore_index=True)


def _frame(rows, columns: list[str], missing: list[str] = ()) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=columns)
    for name in missing:
        frame[name] = None
    for col in ("created_at", "updated_at", "ts"):
        if col in frame:
            frame[col] = frame[col].map(_iso_text).astype(object)
    return frame


def _contract_error(path: Path, engine, exc: Exception) -> ExtractError:
    """The query ran but the source does not look like the contract (or the URL is wrong)."""
    return ExtractError(f"query {path.name} failed against {engine.url.render_as_string(hide_password=True)}: "
                        f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}. Check source.url and that the "
                        f"tables follow the source contract (docs/pipeline.md, 'Source contract').")


def _check_columns(columns: list[str], template: str, expected: list[str]) -> None:
    missing = [name for name in expected if name not in columns]
    if missing:
        raise ExtractError(f"the extract template {template} returns no column {', '.join(missing)}: "
                           "every column of the source contract must be selected (NULL where you have none)")


def window(ds: str, days: int) -> tuple[str, str]:
    """ISO bounds of [ds - days, ds) as bound parameters (midnight UTC)."""
    end = date.fromisoformat(ds)
    start = end - timedelta(days=days)
    return f"{start.isoformat()}T00:00:00", f"{end.isoformat()}T00:00:00"
