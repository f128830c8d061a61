# Test-only stand-in for the `postgres:15` image: Debian's PostgreSQL 15 with an entrypoint that
# honours the same POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB variables and runs the scripts
# mounted in /docker-entrypoint-initdb.d once, when the data folder is new.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive PGDATA=/var/lib/postgresql/data PATH=/usr/lib/postgresql/15/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-common \
    && sed -ri 's/#?\s*create_main_cluster.*/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /docker-entrypoint-initdb.d
COPY docker/stack-test/postgres-entrypoint.sh /usr/local/bin/
ENTRYPOINT ["postgres-entrypoint.sh"]
CMD ["postgres"]
