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
touch "$stub/README.md"
python3 - "$stub" <<'EOF'  # an empty folder for every package pyproject.toml lists
import pathlib, sys, tomllib
stub = pathlib.Path(sys.argv[1])
tool = tomllib.loads((stub / "pyproject.toml").read_text())["tool"]["setuptools"]
mapped = tool.get("package-dir", {})
for package in tool["packages"]:
    parts = package.split(".")
    prefix = next((".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in mapped), None)
    folder = (pathlib.Path(mapped[prefix], *parts[len(prefix.split(".")):]) if prefix
              else pathlib.Path(*parts))
    (stub / folder).mkdir(parents=True, exist_ok=True)
    (stub / folder / "__init__.py").touch()
EOF
"${pip[@]}" install "${find_links[@]}" -c constraints.txt "$stub[$extras]" "$@"
"${pip[@]}" uninstall -q -y lookalike
"${pip[@]}" check
rm -rf "$stub" /root/.cache
