# Test-only stand-in for the `redis:7` image: Debian's Redis server, listening on the network.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/*
CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", ""]
