# One image for every GridTokenX Python service (simulator, edge agent, cloud, localnet, one-shots);
# docker-compose.yml picks the command. Runs as uid 10001, never root (the `credentials` one-shot
# alone runs as root to hand files to the brokers' uid).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# openssl: `gridtokenx broker credentials --tls` makes the dev CA with it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends openssl \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies first, from pyproject.toml alone: this layer survives code changes.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# The code. Editable install: migrations/ and broker-config/ are found next to the packages.
COPY protocol protocol
COPY simulator simulator
COPY edge edge
COPY cloud cloud
COPY gridtokenx gridtokenx
COPY migrations migrations
COPY broker-config broker-config
RUN pip install --no-deps -e . \
    && useradd --uid 10001 --user-group --no-create-home --home-dir /app gridtokenx \
    && mkdir -p /data/edge /data/chain /data/sim /data/localnet /credentials \
    && chown -R gridtokenx:gridtokenx /data

USER 10001
# SIGTERM drains in-flight work (docker stop sends it; compose waits stop_grace_period).
STOPSIGNAL SIGTERM
CMD ["gridtokenx", "--help"]
