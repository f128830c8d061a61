#!/usr/bin/env bash
# Spark resource discovery for GPUs (spark.executor.resource.gpu.discoveryScript): prints the
# GPUs this executor may use as {"name": "gpu", "addresses": ["0", "1", ...]}.
set -euo pipefail
addresses=$(nvidia-smi --query-gpu=index --format=csv,noheader | awk '{printf "%s\"%s\"", (NR > 1 ? "," : ""), $1}')
echo "{\"name\": \"gpu\", \"addresses\": [${addresses}]}"
