"""Lookalike: nightly visually-similar-items tables and per-user recommendations (pipelines/README.md)."""
from __future__ import annotations

import functools
import subprocess
from pathlib import Path


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """What code runs: the installed package's version, and from a git checkout its commit (``-dirty`` when the
    tree has changes), for the run records."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("lookalike")
    except PackageNotFoundError:
        package = None
    root = Path(__file__).resolve().parents[1]
    commit = None
    if (root / ".git").exists():
        try:
            found = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=40"],
                                   capture_output=True, text=True, timeout=10)
            commit = found.stdout.strip() or None if found.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            commit = None
    return {"package": package, "commit": commit}
