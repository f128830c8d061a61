#!/usr/bin/env bash
# Create or refresh .venv with everything Lookalike runs and tests with, pinned by constraints.txt.
# Checks for Java 17+ (Spark) and installs OpenJDK 17 with apt when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

java_major() { java -version 2>&1 | awk -F'"' '/version/ {split($2, v, "."); print (v[1] == "1" ? v[2] : v[1])}'; }
if ! command -v java >/dev/null 2>&1 || [ "$(java_major)" -lt 17 ]; then
  echo "bootstrap: Java 17+ is needed by Spark; installing openjdk-17-jre-headless with apt …"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq openjdk-17-jre-headless >/dev/null
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 13) else 1)'; then
  echo "bootstrap: Python 3.11 or 3.12 is required (found $("$PYTHON" --version 2>&1)); set PYTHON=…" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv …"
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
echo "bootstrap: installing lookalike[all,dev] with constraints.txt (a first install takes a few minutes) …"
# constraints.txt pins every package, torch to its CPU build: an unpinned torch pulls CUDA wheels.
.venv/bin/python -m pip install -q -c constraints.txt -e ".[all,dev]"
.venv/bin/python -m pip check
touch .venv/.installed
echo "bootstrap: ready ($(.venv/bin/python --version))"
