# One Unimeter node. Data lives in the volume /data; the binary protocol listens on 7001 and the
# HTTP API (with /health and /metrics) on 7080. Flags go after the image name, or as UNIMETER_*
# environment variables (docker-compose.yml runs a 3-node cluster this way). It listens on
# 0.0.0.0, so it needs API tokens (UNIMETER_AUTH_TOKENS=/path/in/a/volume) or, for
# development only, UNIMETER_INSECURE=1 (docs/security.md).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY unimeter ./unimeter
# Wheels only, built here, so the final image holds no build tree or pip cache.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UNIMETER_DATA_DIR=/data \
    UNIMETER_LISTEN=0.0.0.0:7001 \
    UNIMETER_HTTP=0.0.0.0:7080
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels unimeter \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --user-group --home-dir /data --no-create-home unimeter \
    && mkdir -p /data \
    && chown unimeter:unimeter /data
USER unimeter
WORKDIR /data
VOLUME ["/data"]
EXPOSE 7001 7080
# SIGTERM (docker stop) makes the node finish in-flight work, sync, snapshot and exit 0; give it
# the time to (docker stop --time, or stop_grace_period in compose).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7080/health', timeout=2)"]
ENTRYPOINT ["python", "-m", "unimeter.node"]
