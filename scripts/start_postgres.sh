#!/usr/bin/env bash
# Start a throw-away PostgreSQL server on loopback for tests; print its SQLAlchemy URL on stdout.
#
#   URL=$(scripts/start_postgres.sh [DATA_DIR])   # DATA_DIR default: a new temp dir
#   scripts/stop_postgres.sh DATA_DIR
#
# Uses Debian's postgresql binaries (/usr/lib/postgresql/*/bin; `apt-get install -y postgresql`).
# initdb refuses to run as root, so as root the cluster belongs to the 'postgres' system user
# (created by the Debian package). Trust auth on 127.0.0.1 only, a free port, a private socket dir.
set -euo pipefail

BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [[ -z "${BIN}" || ! -x "${BIN}/initdb" ]]; then
  echo "start_postgres: no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (apt-get install -y postgresql)" >&2
  exit 3
fi
DATA_DIR=${1:-$(mktemp -d /tmp/rubricate-pg.XXXXXX)}
mkdir -p "${DATA_DIR}"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')

RUN=()
if [[ $(id -u) -eq 0 ]]; then
  if ! id postgres >/dev/null 2>&1; then
    echo "start_postgres: running as root and there is no 'postgres' user to own the cluster" >&2
    exit 3
  fi
  chown -R postgres "${DATA_DIR}"
  chmod 700 "${DATA_DIR}"
  RUN=(runuser -u postgres --)
fi

"${RUN[@]}" "${BIN}/initdb" -D "${DATA_DIR}/data" -U rubricate --auth=trust -E UTF8 --no-locale >"${DATA_DIR}/initdb.log" 2>&1 \
  || { echo "start_postgres: initdb failed:" >&2; tail -n 20 "${DATA_DIR}/initdb.log" >&2; exit 3; }
"${RUN[@]}" "${BIN}/pg_ctl" -D "${DATA_DIR}/data" -l "${DATA_DIR}/server.log" -w -t 60 \
  -o "-c listen_addresses=127.0.0.1 -p ${PORT} -k ${DATA_DIR} -c fsync=off -c max_connections=100" start >/dev/null \
  || { echo "start_postgres: server did not start:" >&2; tail -n 20 "${DATA_DIR}/server.log" >&2; exit 3; }
"${RUN[@]}" "${BIN}/createdb" -h 127.0.0.1 -p "${PORT}" -U rubricate rubricate_test \
  || { echo "start_postgres: createdb failed" >&2; exit 3; }

URL="postgresql+psycopg://rubricate@127.0.0.1:${PORT}/rubricate_test"
echo "${URL}" >"${DATA_DIR}/url"
echo "start_postgres: PostgreSQL $("${BIN}/postgres" --version | awk '{print $3}') on 127.0.0.1:${PORT}, data in ${DATA_DIR}" >&2
echo "${URL}"
