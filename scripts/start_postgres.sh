#!/usr/bin/env bash
# Start a local PostgreSQL for micronet-search studies when it is down, create the database when it is missing,
# and print the MICRONET_STORAGE line that points the workers at it. Running it again changes nothing.
#
#   scripts/start_postgres.sh [DBNAME]          # DBNAME defaults to micronet
#
# The admin connection (to start, check and create) follows the usual libpq variables:
#   PGHOST (default 127.0.0.1), PGPORT (5432), PGUSER (postgres), PGPASSWORD (none).
# As root on a Debian/Ubuntu install, when that TCP connection is refused for lack of a password, it falls back to
# the postgres system user over the local socket (peer authentication).
#
# A login role for the workers (optional; needed where TCP connections require a password, the Debian default):
#   MICRONET_DB_USER      role to create when missing; it gets all privileges on the database
#   MICRONET_DB_PASSWORD  its password (set, or reset, on every run)
#
# Only the export line goes to stdout, so this sets it without showing the password:
#   eval "$(MICRONET_DB_USER=micronet MICRONET_DB_PASSWORD="$(openssl rand -hex 16)" scripts/start_postgres.sh)"
set -euo pipefail

db=${1:-micronet}
host=${PGHOST:-127.0.0.1}
port=${PGPORT:-5432}
admin=${PGUSER:-postgres}
role=${MICRONET_DB_USER:-}
role_password=${MICRONET_DB_PASSWORD:-}
wait_s=${PG_WAIT_SECONDS:-30}

say() { printf 'start_postgres: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

identifier='^[A-Za-z_][A-Za-z0-9_]*$'
[[ $db =~ $identifier ]] || die "database name '$db' must be letters, digits and _ (not starting with a digit)"
[[ -z $role || $role =~ $identifier ]] || die "MICRONET_DB_USER '$role' must be letters, digits and _"
[[ -z $role_password || -n $role ]] || die "MICRONET_DB_PASSWORD is set but MICRONET_DB_USER is not"
{ command -v pg_isready && command -v psql; } >/dev/null ||
  die "the PostgreSQL client tools (psql, pg_isready) are missing; on Debian/Ubuntu: apt-get install postgresql"

is_local() { [[ $host == 127.0.0.1 || $host == localhost || $host == ::1 || $host == /* ]]; }
ready() { pg_isready -h "$host" -p "$port" -q; }

# The Debian cluster (pg_ctlcluster) configured for $port; without pg_lsclusters, the newest in /etc/postgresql.
debian_cluster() {
  local version
  if command -v pg_lsclusters >/dev/null; then
    pg_lsclusters -h 2>/dev/null | awk -v p="$port" '$3 == p {print $1 " " $2; exit}'
    return 0
  fi
  [[ -d /etc/postgresql ]] || return 0
  version=$(find /etc/postgresql -mindepth 2 -maxdepth 2 -type d -name main 2>/dev/null | awk -F/ '{print $4}' |
            sort -V | tail -n 1)
  [[ -n $version ]] && echo "$version main"
  return 0
}

start_server() {
  local cluster
  cluster=$(debian_cluster)
  if [[ -n $cluster ]] && command -v pg_ctlcluster >/dev/null; then
    say "starting PostgreSQL cluster $cluster"
    # shellcheck disable=SC2086  # "$version $name", split on purpose
    pg_ctlcluster --skip-systemctl-redirect $cluster start ||
      die "pg_ctlcluster could not start $cluster (run as root or the postgres user; log: /var/log/postgresql/)"
  elif command -v pg_ctl >/dev/null && [[ -n ${PGDATA:-} ]]; then
    say "starting PostgreSQL in $PGDATA with pg_ctl"
    pg_ctl -D "$PGDATA" -l "$PGDATA/server.log" -o "-p $port" -w start ||
      die "pg_ctl could not start the server in $PGDATA (see $PGDATA/server.log)"
  else
    die "no PostgreSQL server to start here. Install one (Debian/Ubuntu: apt-get install postgresql), or set
  PGDATA to an initialised data directory (initdb) for pg_ctl, or run it in a container:
    docker run -d --name micronet-postgres -p $port:5432 -e POSTGRES_USER=micronet \\
      -e POSTGRES_PASSWORD=CHANGE-ME -e POSTGRES_DB=$db postgres:16
  then: PGUSER=micronet PGPASSWORD=CHANGE-ME $0 $db"
  fi
}

if ready; then
  say "PostgreSQL is running on $host:$port"
elif is_local; then
  start_server
else
  die "PostgreSQL on $host:$port is not reachable; start it on that machine (or unset PGHOST for a local one)"
fi

for ((i = 0; i < wait_s; i++)); do
  ready && break
  sleep 1
done
ready || die "PostgreSQL on $host:$port did not accept connections within ${wait_s}s"

# psql as the admin: over TCP, or as the postgres system user over the local socket where TCP wants a password.
psql_admin=(psql -X -q -v ON_ERROR_STOP=1 -h "$host" -p "$port" -U "$admin")
if ! "${psql_admin[@]}" -d postgres -tAc 'SELECT 1' >/dev/null 2>&1; then
  if is_local && [[ $EUID -eq 0 ]] && id postgres >/dev/null 2>&1 && command -v runuser >/dev/null; then
    say "no password for $admin over TCP; using the postgres system user over the local socket"
    psql_admin=(runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$port")
    "${psql_admin[@]}" -d postgres -tAc 'SELECT 1' >/dev/null ||
      die "cannot connect as the postgres system user either"
  else
    "${psql_admin[@]}" -d postgres -tAc 'SELECT 1' >/dev/null ||
      die "cannot connect to $host:$port as $admin (set PGUSER/PGPASSWORD, or run as root on the server)"
  fi
fi
query() { "${psql_admin[@]}" -d "$1" -tA; }  # SQL on stdin: no password in the process list

if [[ -n $role ]]; then
  if [[ -z $(echo "SELECT 1 FROM pg_roles WHERE rolname = '$role'" | query postgres) ]]; then
    say "creating role $role"
    echo "CREATE ROLE $role LOGIN" | query postgres
  fi
  if [[ -n $role_password ]]; then
    echo "ALTER ROLE $role PASSWORD '${role_password//\'/\'\'}'" | query postgres
  fi
fi

if [[ -z $(echo "SELECT 1 FROM pg_database WHERE datname = '$db'" | query postgres) ]]; then
  say "creating database $db"
  echo "CREATE DATABASE $db${role:+ OWNER $role}" | query postgres
else
  say "database $db exists"
fi
if [[ -n $role ]]; then
  echo "GRANT ALL PRIVILEGES ON DATABASE $db TO $role" | query postgres
  echo "GRANT ALL ON SCHEMA public TO $role" | query "$db"
fi

# The URL: percent-encode the user and the password (byte by byte, so any character is safe).
urlencode() {
  local LC_ALL=C s=$1 out='' c i
  for ((i = 0; i < ${#s}; i++)); do
    c=${s:i:1}
    case $c in
      [A-Za-z0-9._~-]) out+=$c ;;
      *) out+=$(printf '%%%02X' "'$c") ;;
    esac
  done
  printf '%s' "$out"
}
user=${role:-$admin}
password=${role:+$role_password}
[[ -n $role ]] || password=${PGPASSWORD:-}
auth=$(urlencode "$user")${password:+:$(urlencode "$password")}
if [[ $host == /* ]]; then
  url="postgresql://$auth@/$db?host=$host&port=$port"
else
  url_host=$host
  [[ $host != *:* ]] || url_host="[$host]"  # IPv6
  url="postgresql://$auth@$url_host:$port/$db"
fi

if is_local; then
  say "workers on other machines: use this machine's name instead of $host, and let PostgreSQL listen there"
  say "  (listen_addresses in postgresql.conf, a 'host $db $user 10.0.0.0/8 scram-sha-256' line in pg_hba.conf)"
fi
printf 'export MICRONET_STORAGE=%q\n' "$url"
