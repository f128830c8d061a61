# Spark master and workers with the same Spark (pyspark 4.3.0), Python and libraries as the
# driver: executors run Lookalike's embedding function (torch, transformers) in Python workers.
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless curl procps \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/lookalike
COPY pyproject.toml constraints.txt README.md ./
COPY pipelines ./pipelines
COPY jobs ./jobs
COPY sql ./sql
COPY docker/spark ./docker/spark
RUN pip install --no-cache-dir -c constraints.txt --extra-index-url https://download.pytorch.org/whl/cpu \
        -e ".[spark,s3]" \
    && ln -s "$(python -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')" /opt/spark
ENV SPARK_HOME=/opt/spark \
    PYSPARK_PYTHON=/usr/local/bin/python
