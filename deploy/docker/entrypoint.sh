#!/bin/sh
# Entrypoint of the neuroflow image: the first argument picks the service.
#   neuroflow-entrypoint <service> [<service> ...]  run `neuroflow serve` (ingest, orchestrator, preprocess,
#                                                  segmentation, longitudinal, results, monitor, all)
#   neuroflow-entrypoint health                    exit 0 when this container's service is alive (/healthz)
#   neuroflow-entrypoint neuroflow <args>          any other neuroflow command (classify, run, ...)
set -eu

case "${1:---help}" in
  health)
    # Liveness, on the metrics port (core/status_server.py): 200 while every service loop makes progress,
    # 503 with the reason when one is stuck. Readiness (/readyz) is the orchestrator's business, not Docker's.
    exec python -c 'import os, sys, urllib.error, urllib.request
port = os.environ.get("NEUROFLOW_METRICS_PORT", "0")
if port in ("", "0"):
    sys.exit("neuroflow health: NEUROFLOW_METRICS_PORT is not set, nothing to probe")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=4) as answer:
        sys.exit(0 if answer.status == 200 else f"neuroflow health: /healthz answered {answer.status}")
except urllib.error.HTTPError as failing:
    reason = failing.read().decode("utf-8", "replace")[:500]
    sys.exit(f"neuroflow health: /healthz answered {failing.code}: {reason}")'
    ;;
  neuroflow)
    shift
    exec neuroflow "$@"
    ;;
  -h|--help)
    exec neuroflow serve --help
    ;;
  *)
    exec neuroflow serve "$@"
    ;;
esac
