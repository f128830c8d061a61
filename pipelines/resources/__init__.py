"""The files Lookalike runs besides its code, found in the installed package (importlib.resources)
wherever it is installed: the SQL of the repository's ``sql/`` folder (package ``lookalike.sql``),
the DAG files of ``dags/`` (``lookalike.dags``) and the scripts beside this module.

In a checkout (an editable install) these are the repository's own folders, so an edit to
``sql/extract/listings_window.sql`` is what the next run reads."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def _folder(package: str) -> Path:
    return Path(str(files(package)))  # a plain folder: the package is never imported from a zip


def sql_path(*parts: str) -> Path:
    """A file or folder under ``sql/``, e.g. ``sql_path("extract")``."""
    return _folder("lookalike.sql").joinpath(*parts)


def dags_folder() -> Path:
    """The folder of the DAG files, for ``AIRFLOW__CORE__DAGS_FOLDER``."""
    return _folder("lookalike.dags")


def script_path(name: str) -> Path:
    """A script shipped beside this module (``gpu-discovery.sh``)."""
    return _folder("lookalike.resources").joinpath(name)
