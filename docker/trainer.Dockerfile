# The GPU worker: a Celery worker on the `gpu` queue that runs fine-tuning with CUDA torch
# (PyPI's torch 2.13.0 wheel brings its CUDA libraries; the driver comes from the host through
# the NVIDIA container runtime). Multi-GPU hosts train with `torchrun` (README "Training on GPU
# workers").
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless curl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/lookalike
COPY pyproject.toml constraints.txt README.md ./
COPY pipelines ./pipelines
COPY jobs ./jobs
COPY sql ./sql
COPY dags ./dags
COPY docker/spark ./docker/spark
RUN pip install --no-cache-dir -c constraints.txt -e ".[all]" "apache-airflow-providers-celery" "redis"
ENV AIRFLOW_HOME=/data/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/lookalike/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False
