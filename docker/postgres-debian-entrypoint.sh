#!/bin/sh
# Create the cluster, user and database on the first start, then run the server.
# Behaves like the official image's entrypoint for POSTGRES_PASSWORD, POSTGRES_USER and
# POSTGRES_DB, but supports nothing else (no init scripts, no other variables).
set -eu

: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "postgres-debian: POSTGRES_PASSWORD is missing: set it to create the database" >&2
        exit 1
    fi
    echo "postgres-debian: creating the cluster in $PGDATA for user $POSTGRES_USER"
    password_file=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$password_file"
    # Local socket connections need no password, as in the official image. Every TCP
    # connection must authenticate with SCRAM.
    initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$password_file" \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$password_file"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    if [ "$POSTGRES_DB" != "postgres" ]; then
        # Single-user mode creates the database before the server accepts connections,
        # so a health check cannot pass while the database is still missing.
        echo "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\";" |
            postgres --single -D "$PGDATA" -j postgres >/dev/null
    fi
fi

if [ "${1:-}" = "postgres" ]; then
    shift
    exec postgres -D "$PGDATA" "$@"
fi
exec "$@"
