# Test-only stand-in for MinIO (and its `mc` client): moto's S3-compatible server from PyPI, at
# the version constraints.txt pins, and boto3 to create the buckets. It keeps objects in memory.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY constraints.txt /tmp/
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install -q -c /tmp/constraints.txt "moto[server]" boto3
ENV PATH=/opt/venv/bin:$PATH
CMD ["moto_server", "-H", "0.0.0.0", "-p", "9000"]
