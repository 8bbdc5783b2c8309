#!/usr/bin/env bash
# Stop a server started by scripts/start_postgres.sh and remove its data directory.
set -euo pipefail
DATA_DIR=${1:?usage: stop_postgres.sh DATA_DIR}
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
RUN=()
[[ $(id -u) -eq 0 ]] && RUN=(runuser -u postgres --)
if [[ -f "${DATA_DIR}/data/postmaster.pid" ]]; then
  "${RUN[@]}" "${BIN}/pg_ctl" -D "${DATA_DIR}/data" -m fast -w stop >/dev/null || true
fi
rm -rf "${DATA_DIR}"
