#!/usr/bin/env bash
# Installs what lookalike[EXTRAS] depends on, pinned by constraints.txt, into /opt/venv, without
# Lookalike itself: the images run this before copying the code, so that layer is rebuilt only
# when pyproject.toml, constraints.txt or this script change. Wheels in /opt/wheelhouse, when
# present, are preferred to PyPI's (the CPU build of torch, see docker/wheelhouse/README.md).
#   docker/install-deps.sh EXTRAS [PIP ARGS …]
set -euo pipefail
extras=$1; shift
python3 -m venv /opt/venv
pip=(/opt/venv/bin/python -m pip)
find_links=()
[ -d /opt/wheelhouse ] && find_links=(--find-links /opt/wheelhouse)
"${pip[@]}" install -q "setuptools>=77" wheel
stub=$(mktemp -d)  # the project's metadata with empty packages: its dependencies, not its code
cp pyproject.toml "$stub/"
mkdir "$stub/pipelines" "$stub/jobs"
touch "$stub/README.md" "$stub/pipelines/__init__.py" "$stub/jobs/__init__.py"
"${pip[@]}" install "${find_links[@]}" -c constraints.txt "$stub[$extras]" "$@"
"${pip[@]}" uninstall -q -y lookalike
"${pip[@]}" check
rm -rf "$stub" /root/.cache
