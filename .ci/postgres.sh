#!/usr/bin/env bash
# A throwaway PostgreSQL for the test suite: Debian's package, its own cluster "flows_test" on
# 127.0.0.1:5433 (so a developer's "main" cluster on 5432 is never touched), a role that may
# create databases (the tests make one per test from a template) and a database of its own.
#
#   TEST_POSTGRES_URL="$(bash .ci/postgres.sh)"   # prints only the URL on stdout; logs to stderr
#
# Idempotent: installs, creates, configures and starts only what is missing. Run as root (or as
# anyone once the cluster is up). The tests default to the same URL, so after one run here a
# plain `pytest` covers PostgreSQL too.
set -euo pipefail

CLUSTER=flows_test
PORT="${FLOWS_PG_PORT:-5433}"
ROLE=flows_test
PASSWORD=flows_test
DATABASE=flows_test
URL="postgresql+psycopg://${ROLE}:${PASSWORD}@127.0.0.1:${PORT}/${DATABASE}"

log() { echo "postgres.sh: $*" >&2; }

reachable() {
    command -v psql >/dev/null &&
        PGPASSWORD="$PASSWORD" PGCONNECT_TIMEOUT=3 psql -h 127.0.0.1 -p "$PORT" -U "$ROLE" \
            -d "$DATABASE" -Atqc 'select 1' >/dev/null 2>&1
}

if reachable; then
    log "already running on 127.0.0.1:${PORT}"
    echo "$URL"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    log "PostgreSQL is not reachable on 127.0.0.1:${PORT} and setting it up needs root"
    exit 1
fi

if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    log "installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
fi

# The newest server version installed.
VERSION="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"

# Data in memory where /dev/shm is a tmpfs: each test creates and drops a database, which costs
# ten times more on this machine's disk (about 400 ms against 35 ms). Lost on reboot, as it may be.
DATA_DIR=""
if [ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ]; then
    DATA_DIR="/dev/shm/postgresql-${VERSION}-${CLUSTER}"
fi

if pg_lsclusters -h | awk '{print $1 "/" $2}' | grep -qx "${VERSION}/${CLUSTER}" &&
    [ ! -f "$(pg_conftool -s "$VERSION" "$CLUSTER" show data_directory)/PG_VERSION" ]; then
    log "cluster ${VERSION}/${CLUSTER} lost its data directory (a reboot cleared it): recreating"
    pg_dropcluster "$VERSION" "$CLUSTER" >&2
fi
if ! pg_lsclusters -h | awk '{print $1 "/" $2}' | grep -qx "${VERSION}/${CLUSTER}"; then
    log "creating cluster ${VERSION}/${CLUSTER} on port ${PORT} in ${DATA_DIR:-the default place}"
    pg_createcluster "$VERSION" "$CLUSTER" --port "$PORT" --start-conf manual \
        ${DATA_DIR:+--datadir "$DATA_DIR"} >&2
fi
# Written on every run, so an interrupted first run heals; Debian's postgresql.conf includes
# conf.d/. Test data only: durability buys nothing here and costs most of the time of
# CREATE DATABASE and of every commit.
cat >"/etc/postgresql/${VERSION}/${CLUSTER}/conf.d/flows_test.conf" <<CONF
listen_addresses = '127.0.0.1'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
CONF

if ! pg_lsclusters -h | awk -v c="$CLUSTER" -v v="$VERSION" '$1 == v && $2 == c {print $4}' |
    grep -qx online; then
    log "starting cluster ${VERSION}/${CLUSTER}"
    pg_ctlcluster "$VERSION" "$CLUSTER" start >&2
fi

for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p "$PORT" && break
    sleep 0.5
done
pg_isready -h 127.0.0.1 -p "$PORT" >&2

# As the cluster's superuser over the local socket (peer authentication).
su postgres -c "psql -p '$PORT' -v ON_ERROR_STOP=1 -q" >&2 <<SQL
SELECT format('CREATE ROLE %I LOGIN CREATEDB PASSWORD %L', '$ROLE', '$PASSWORD')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', '$DATABASE', '$ROLE')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DATABASE') \gexec
SQL

if ! reachable; then
    log "the cluster is up but ${ROLE} cannot connect to ${DATABASE} on 127.0.0.1:${PORT}"
    exit 1
fi
log "ready on 127.0.0.1:${PORT}"
echo "$URL"
