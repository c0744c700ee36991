#!/usr/bin/env bash
# Make sure a Redis answers on 127.0.0.1:6379 for `make bench`, starting Debian's
# redis-server if it is installed but not running. Nothing to do when BENCH_REDIS_URL
# points the bench elsewhere. (`make test` needs none of this: the suite starts its own
# Redis, see tests/conftest.py; PostgreSQL is embedded everywhere.)
set -euo pipefail

REDIS_HOST=127.0.0.1
REDIS_PORT=${PI_REDIS_PORT:-6379}
WAIT_SECONDS=${PI_SERVICES_WAIT_SECONDS:-30}

log() { echo "ensure-redis: $*" >&2; }

if [ -n "${BENCH_REDIS_URL:-}" ]; then
    exit 0
fi

redis_up() { [ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]; }

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    log "redis-server is not installed: apt-get install redis-server,"
    log "or point the bench at a Redis with BENCH_REDIS_URL=redis://host:port/db"
    exit 1
fi

if ! redis_up; then
    log "starting redis-server on $REDIS_HOST:$REDIS_PORT"
    redis-server --daemonize yes --bind "$REDIS_HOST" --port "$REDIS_PORT" \
        --save "" --appendonly no >/dev/null
fi

deadline=$((SECONDS + WAIT_SECONDS))
until redis_up; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        log "Redis does not answer on $REDIS_HOST:$REDIS_PORT after ${WAIT_SECONDS}s"
        exit 1
    fi
    sleep 0.5
done
log "Redis $REDIS_HOST:$REDIS_PORT is up"
