# syntax=docker/dockerfile:1
#
# The reciprocity image: one Python package, one console script. The default
# command is a production pipeline worker (`reciprocity run`), configured by
# RECIPROCITY_* environment variables (README.md, "Configuration"); the same
# image runs the producers (`reciprocity produce ...`) and reports.
#
#   docker build -t reciprocity:local .
#   docker compose -f deploy/compose/compose.yaml up -d     # the full stack
#
# The base image is pinned by tag. Recommended practice for production builds
# is to pin it by digest as well, so a re-pushed tag cannot change the build:
#   FROM python:3.11.11-slim-bookworm@sha256:<digest> AS build
# (`docker buildx imagetools inspect python:3.11.11-slim-bookworm` prints the
# digest; update both stages together.)

# ---------------------------------------------------------------------------
# build: wheels of the project and of every dependency. Most dependencies ship
# binary wheels; the C compiler is for any that does not on the target platform
# (faust-streaming's sdist then builds its Cython speed-ups). The compiler never
# reaches the final image.
FROM python:3.11.11-slim-bookworm AS build

# Debian point releases replace package versions, so exact apt pins would break
# the build; this stage is thrown away, only its wheels are kept.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas/ schemas/
COPY producers/ producers/
COPY pipeline/ pipeline/
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# ---------------------------------------------------------------------------
# runtime: the wheels installed offline, no compiler, a non-root user.
FROM python:3.11.11-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="reciprocity" \
      org.opencontainers.image.description="Live return-on-relationship analytics: Kafka -> Faust -> ClickHouse" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RECIPROCITY_WEB_ENABLED=true

# uid/gid 10001: outside the range of distribution and base-image users. /app is
# the working directory (Faust keeps its data directory there); /config is where
# registries live: an empty named volume mounted there takes its ownership.
RUN groupadd --system --gid 10001 reciprocity \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin reciprocity \
    && mkdir -p /app /config \
    && chown 10001:10001 /app /config

# Only the wheels built above, nothing from an index; the wheel directory is
# bind-mounted from the build stage, so it adds no layer to this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/reciprocity-*.whl

WORKDIR /app
USER 10001:10001

# Faust web server: /health for the health check (bound to 127.0.0.1 unless
# RECIPROCITY_WEB_HOST says otherwise; compose binds 0.0.0.0 inside its network).
EXPOSE 6066
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:6066/health', timeout=4)"]

ENTRYPOINT ["reciprocity"]
CMD ["run"]
