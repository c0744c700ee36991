#!/usr/bin/env bash
# Make sure PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) answer, starting the
# locally installed servers if needed. Used by `make test` and .ci/run.
set -euo pipefail

PG_HOST=127.0.0.1
PG_PORT=5432
REDIS_HOST=127.0.0.1
REDIS_PORT=${PI_REDIS_PORT:-6379}
WAIT_SECONDS=${PI_SERVICES_WAIT_SECONDS:-60}

log() { echo "ensure-services: $*" >&2; }

pg_up() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; }
redis_up() { [ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]; }

missing=()
command -v pg_isready >/dev/null && command -v pg_ctlcluster >/dev/null || missing+=(postgresql)
command -v redis-server >/dev/null && command -v redis-cli >/dev/null || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
    log "not installed: ${missing[*]}"
    log "install them with: apt-get install postgresql redis-server"
    exit 1
fi

if ! pg_up; then
    shopt -s nullglob
    versions=(/etc/postgresql/*/main)
    shopt -u nullglob
    if [ ${#versions[@]} -eq 0 ]; then
        log "PostgreSQL is installed but has no 'main' cluster under /etc/postgresql"
        log "create one with: pg_createcluster --start <version> main"
        exit 1
    fi
    version=$(basename "$(dirname "${versions[-1]}")")
    log "starting PostgreSQL $version (cluster main)"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
fi

if ! redis_up; then
    log "starting redis-server on $REDIS_HOST:$REDIS_PORT"
    redis-server --daemonize yes --bind "$REDIS_HOST" --port "$REDIS_PORT" \
        --save "" --appendonly no >/dev/null
fi

deadline=$((SECONDS + WAIT_SECONDS))
until pg_up && redis_up; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        pg_up || log "PostgreSQL does not answer on $PG_HOST:$PG_PORT after ${WAIT_SECONDS}s"
        redis_up || log "Redis does not answer on $REDIS_HOST:$REDIS_PORT after ${WAIT_SECONDS}s"
        exit 1
    fi
    sleep 0.5
done
log "PostgreSQL $PG_HOST:$PG_PORT and Redis $REDIS_HOST:$REDIS_PORT are up"
