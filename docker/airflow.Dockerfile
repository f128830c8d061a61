# Airflow 3 with Lookalike installed: api-server, scheduler, dag-processor, triggerer, the Celery
# worker of the default queue and the seed job. CPU torch (docker/wheelhouse); Java for the Spark
# driver that `embed.launcher: spark-submit` starts on the worker.
#   BASE_IMAGE: any Debian bookworm image with python3 (3.11) and its venv module.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless curl procps \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/lookalike
# Dependencies first, in layers that change only with the pins.
COPY docker/wheelhouse/ /opt/wheelhouse/
COPY pyproject.toml constraints.txt docker/install-deps.sh ./
RUN ./install-deps.sh all,celery && rm -rf /opt/wheelhouse
COPY README.md ./
COPY sql ./sql
COPY jobs ./jobs
COPY pipelines ./pipelines
COPY dags ./dags
RUN /opt/venv/bin/pip install -q --no-deps --no-build-isolation -e . && rm install-deps.sh \
    && /opt/venv/bin/python -c "import airflow.providers.celery.executors.celery_executor"  # the workers can start
ENV PATH=/opt/venv/bin:$PATH \
    AIRFLOW_HOME=/data/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/lookalike/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    PYSPARK_PYTHON=/opt/venv/bin/python
