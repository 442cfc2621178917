# syntax=docker/dockerfile:1
# Load generator for docker/compose.yaml: Locust + what loadtest/locustfile.py imports
# (loadtest/auctions.py: msgspec, numpy). The locustfile itself is mounted, not copied.
#   docker build -f docker/locust.Dockerfile -t adrank-locust docker
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
 && python3 -m venv /opt/locust \
 && /opt/locust/bin/pip install --no-cache-dir --disable-pip-version-check \
        "locust==2.47.0" "msgspec==0.22.0" "numpy==2.4.6" "tqdm==4.70.1" \
 && groupadd --gid 10002 locust \
 && useradd --uid 10002 --gid locust --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin locust
ENV PATH=/opt/locust/bin:$PATH PYTHONUNBUFFERED=1
USER 10002:10002
WORKDIR /tmp
EXPOSE 8089
ENTRYPOINT ["locust"]
CMD ["--help"]
