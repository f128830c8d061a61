# Spark master and workers with the same Spark (pyspark's), Python and libraries as the driver:
# executors run Lookalike's embedding function (torch, transformers) in Python workers, from the
# same /opt/venv path as the Airflow image's driver.
#   BASE_IMAGE: any Debian bookworm image with python3 (3.11) and its venv module.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless curl procps \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/lookalike
COPY docker/wheelhouse/ /opt/wheelhouse/
COPY pyproject.toml constraints.txt docker/install-deps.sh ./
RUN ./install-deps.sh spark,s3 && rm -rf /opt/wheelhouse \
    && ln -s "$(/opt/venv/bin/python -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')" /opt/spark
COPY README.md ./
COPY sql ./sql
COPY dags ./dags
COPY jobs ./jobs
COPY pipelines ./pipelines
RUN /opt/venv/bin/pip install -q --no-deps --no-build-isolation -e . && rm install-deps.sh
ENV PATH=/opt/venv/bin:$PATH \
    SPARK_HOME=/opt/spark \
    PYSPARK_PYTHON=/opt/venv/bin/python
