#!/usr/bin/env bash
# Triton Inference Server on loopback for development, serving the CPU variant of every model of
# models/repository (see neuroflow.devtools.triton_server, which the tests and `neuroflow stack up` use).
#
#   scripts/triton.sh fetch          download nvidia-pytriton (its tritonserver) into the cache, once
#   scripts/triton.sh start [--models DIR] [--data-dir D] [--grpc-port P] [--http-port P] [--threads N]
#                                    build the Triton repository in D, start the server in the background,
#                                    print its gRPC address once every model is ready
#   scripts/triton.sh stop [--data-dir D]     stop the server started in D (by its PID)
#   scripts/triton.sh status [--data-dir D]   exit 0 when it runs, 3 when not
#
# Defaults: data dir .neuroflow/triton; free loopback ports. Cache: ${NEUROFLOW_CACHE:-~/.cache/neuroflow}/triton.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
exec "$PYTHON" -m neuroflow.devtools.triton_server "$@"
