# The GPU worker: a Celery worker on the `gpu` queue that fine-tunes with CUDA torch (PyPI's
# torch wheel brings its CUDA libraries; the driver comes from the host through the NVIDIA
# container runtime) and has FAISS for GPUs. Multi-GPU hosts train with `torchrun` (docs/models.md,
# "Training on GPU workers"). docker/wheelhouse is not used: torch must be the CUDA build here.
#   BASE_IMAGE: any Debian bookworm image with python3 (3.11) and its venv module.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends curl procps \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/lookalike
COPY pyproject.toml constraints.txt docker/install-deps.sh ./
RUN ./install-deps.sh train,airflow,celery,s3,postgres,gpu
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
    AIRFLOW__CORE__LOAD_EXAMPLES=False
