# Airflow 3 image with Lookalike installed: api-server, scheduler, dag-processor, triggerer, the
# Celery worker of the default queue and the seed job (CPU torch; embedding runs on Spark).
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
# constraints.txt pins torch to 2.13.0; the CPU index serves its CPU build (no CUDA libraries here).
RUN pip install --no-cache-dir -c constraints.txt --extra-index-url https://download.pytorch.org/whl/cpu \
        -e ".[all]" "apache-airflow-providers-celery" "redis"
ENV AIRFLOW_HOME=/data/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/lookalike/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    PYSPARK_PYTHON=/usr/local/bin/python
