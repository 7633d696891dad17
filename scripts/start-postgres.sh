#!/usr/bin/env bash
# Start a local PostgreSQL for the tuneserve tests, listening on loopback only.
# Idempotent: installs the server if missing, creates the cluster, role and
# database if missing, and starts the cluster if it is down. Prints the URL
# to export as TUNESERVE_TEST_POSTGRES_URL on its last line.
set -euo pipefail

PGUSER_NAME="${TUNESERVE_PG_USER:-tuneserve}"
PGPASS="${TUNESERVE_PG_PASSWORD:-tuneserve}"
PGDB="${TUNESERVE_PG_DB:-tuneserve_test}"
PGPORT="${TUNESERVE_PG_PORT:-5432}"

if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
fi

VER="$(ls /usr/lib/postgresql | sort -V | tail -n1)"
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$VER main"; then
  pg_createcluster "$VER" main -p "$PGPORT" -- --auth-local=peer --auth-host=scram-sha-256 >&2
fi

CONF="/etc/postgresql/$VER/main/postgresql.conf"
# Loopback only: never listen on another interface.
if ! grep -q "^listen_addresses = 'localhost'" "$CONF"; then
  echo "listen_addresses = 'localhost'" >> "$CONF"
fi

STATUS="$(pg_lsclusters -h | awk -v v="$VER" '$1==v && $2=="main" {print $4}')"
if [ "$STATUS" != "online" ]; then
  pg_ctlcluster "$VER" main start >&2
fi

# Wait until it accepts connections.
for _ in $(seq 1 30); do
  if su postgres -c "psql -p $PGPORT -tAc 'select 1'" >/dev/null 2>&1; then break; fi
  sleep 1
done

psql_admin() { su postgres -c "psql -p $PGPORT -v ON_ERROR_STOP=1 -tAc \"$1\""; }
if [ "$(psql_admin "select 1 from pg_roles where rolname='$PGUSER_NAME'")" != "1" ]; then
  psql_admin "create role $PGUSER_NAME login password '$PGPASS' createdb" >&2
fi
if [ "$(psql_admin "select 1 from pg_database where datname='$PGDB'")" != "1" ]; then
  psql_admin "create database $PGDB owner $PGUSER_NAME" >&2
fi

echo "postgres://$PGUSER_NAME:$PGPASS@127.0.0.1:$PGPORT/$PGDB"
