#!/usr/bin/env bash
# Starts, stops or shows the whole local stack (PostgreSQL, site and destination Orthanc, Kafka,
# Prometheus, Alertmanager and one process per service) on loopback:
#   scripts/stack.sh up [--wait-window S] [--preprocess-workers N]
#   scripts/stack.sh down
#   scripts/stack.sh status
# Endpoints and credentials: .neuroflow/stack.json. Logs: .neuroflow/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
make --quiet .venv/.installed system-deps >/dev/null
exec .venv/bin/neuroflow stack "$@"
