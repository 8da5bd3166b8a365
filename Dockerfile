# syntax=docker/dockerfile:1
# ringd as a container: `make image` (needs Docker; see the README's operations section).
#
#   docker run --read-only -p 50051:50051 -p 9464:9464 ringd:0.1.0 \
#       --listen 0.0.0.0:50051 --metrics-listen 0.0.0.0:9464
#
# Two stages: the first builds a virtualenv with ringd and its dependencies (wheels;
# ringd's C extension compiled; byte-compiled), the second copies that virtualenv alone
# onto a clean slim base, so no compiler, pip cache or source tree ships. It runs as uid 10001 and writes
# nothing outside /var/lib/ringd (the SQLite store, a volume), so it runs on a
# read-only root file system.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# A C compiler for the native scan (ringd.plugins._scan, an optional extension: without
# one the install succeeds and the PII scanner runs in pure Python, 5-10x slower). The
# build stage only: the runtime stage gets the built venv, not the compiler.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/ringd
COPY pyproject.toml README.md ./
COPY src ./src
COPY sdk ./sdk
COPY server ./server
COPY plugins ./plugins
COPY clients/python ./clients/python
COPY testing ./testing
RUN /opt/ringd/bin/pip install . \
    && /opt/ringd/bin/python -m compileall -q /opt/ringd/lib

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="ringd" \
      org.opencontainers.image.description="The plugin engine LLM gateways call over gRPC"
RUN groupadd --system --gid 10001 ringd \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/ringd --no-create-home \
       --shell /usr/sbin/nologin ringd \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/ringd
COPY --from=build /opt/ringd /opt/ringd
# No .pyc writes at run time (compiled at build); JSON log lines for a collector.
ENV PATH=/opt/ringd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RINGD_LOG_FORMAT=json
WORKDIR /var/lib/ringd
VOLUME ["/var/lib/ringd"]
USER 10001:10001
EXPOSE 50051 9464
# `ringd health` imports grpc and the health stubs only: cheap enough to run every 10 s.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["ringd", "health", "--target", "127.0.0.1:50051", "--timeout", "3"]
ENTRYPOINT ["ringd", "serve"]
CMD ["--listen", "0.0.0.0:50051"]
