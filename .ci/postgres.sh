#!/usr/bin/env bash
# A PostgreSQL server on loopback for the distributed-tuning tests (tests/scale), from Debian's packages.
# Idempotent: installs postgresql if missing, creates and starts a cluster, a user and a database (each only if
# absent), and prints the one line to export. Progress goes to stderr, so a developer (as root) can run:
#   eval "$(sudo bash .ci/postgres.sh)" && .venv/bin/python -m pytest tests/scale
# Override the names with ARCAST_PG_USER, ARCAST_PG_PASSWORD, ARCAST_PG_DB.
set -euo pipefail

user=${ARCAST_PG_USER:-arcast}
password=${ARCAST_PG_PASSWORD:-arcast}
db=${ARCAST_PG_DB:-arcast_test}

say() { echo "postgres.sh: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    say "run as root: it installs and starts a server (sudo bash .ci/postgres.sh)"
    exit 1
fi

if ! command -v pg_lsclusters >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    say "installing Debian's postgresql"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi

version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
cluster() { pg_lsclusters --no-header | awk -v v="$version" '$1 == v && $2 == "main"'; }

if [ -z "$(cluster)" ]; then
    say "creating cluster $version/main"
    pg_createcluster "$version" main >&2
fi
if [ "$(cluster | awk '{print $4}')" != online ]; then
    say "starting cluster $version/main"
    pg_ctlcluster "$version" main start >&2
fi
port=$(cluster | awk '{print $3}')

# As the postgres superuser over the local socket; from / so that psql need not read the caller's folder.
sql() { (cd / && runuser -u postgres -- psql -p "$port" -v ON_ERROR_STOP=1 -qtA -c "$1"); }

if [ "$(sql "SELECT 1 FROM pg_roles WHERE rolname = '$user'")" != 1 ]; then
    say "creating role $user"
    sql "CREATE ROLE \"$user\" LOGIN PASSWORD '$password'"
fi
if [ "$(sql "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]; then
    say "creating database $db"
    sql "CREATE DATABASE \"$db\" OWNER \"$user\""
fi

# Loopback only: Debian's cluster listens on localhost and accepts passwords from 127.0.0.1.
echo "export ARCAST_TEST_POSTGRES_URL=postgresql+psycopg://$user:$password@127.0.0.1:$port/$db"
