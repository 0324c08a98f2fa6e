#!/usr/bin/env bash
# Make sure PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) answer.
# Starts them when they are installed but not running; stops with one line
# saying what is missing otherwise. Usage: ensure-services.sh [--optional]
# (--optional: report, but do not fail; the demo falls back to SQLite/locmem).
set -u
optional=0
[ "${1:-}" = "--optional" ] && optional=1
fail() {
    echo "ensure-services: $*" >&2
    [ "$optional" = 1 ] && return 0
    exit 1
}

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

if ! redis_up; then
    if command -v redis-server >/dev/null 2>&1; then
        echo "ensure-services: starting Redis on 127.0.0.1:6379" >&2
        mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
        redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
            --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null
        for _ in $(seq 50); do redis_up && break; sleep 0.1; done
        redis_up || fail "Redis did not start; see /var/log/redis/ci.log"
    else
        fail "Redis is not installed and nothing answers on 127.0.0.1:6379 (apt-get install redis-server)"
    fi
fi

if ! pg_up; then
    if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
        echo "ensure-services: starting PostgreSQL on 127.0.0.1:5432" >&2
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
        for _ in $(seq 100); do pg_up && break; sleep 0.1; done
        pg_up || fail "PostgreSQL did not start (pg_ctlcluster ... main start failed)"
    else
        fail "PostgreSQL is not installed and nothing answers on 127.0.0.1:5432 (apt-get install postgresql)"
    fi
fi
exit 0
