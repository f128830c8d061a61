# Airflow 3 image with Lookalike installed (scheduler, api-server, dag-processor, workers).
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/lookalike
COPY pyproject.toml constraints.txt README.md ./
COPY pipelines ./pipelines
COPY jobs ./jobs
COPY sql ./sql
COPY dags ./dags
RUN pip install --no-cache-dir -c constraints.txt --extra-index-url https://download.pytorch.org/whl/cpu -e ".[all]"
ENV AIRFLOW__CORE__DAGS_FOLDER=/opt/lookalike/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False
USER nobody
