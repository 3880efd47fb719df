#!/bin/sh
# Entrypoint of the neuroflow image: the first argument picks the service.
#   neuroflow-entrypoint <service> [<service> ...]  run `neuroflow serve` (ingest, orchestrator, preprocess,
#                                                  segmentation, longitudinal, results, monitor, all)
#   neuroflow-entrypoint health                    exit 0 when this container's metrics endpoint answers
#   neuroflow-entrypoint neuroflow <args>          any other neuroflow command (classify, run, ...)
set -eu

case "${1:---help}" in
  health)
    # The metrics server runs from the moment the service starts until it stops (runtime/distributed.py).
    exec python -c 'import os, sys, urllib.request
port = os.environ.get("NEUROFLOW_METRICS_PORT", "0")
if port in ("", "0"):
    sys.exit("neuroflow health: NEUROFLOW_METRICS_PORT is not set, nothing to probe")
with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=4) as answer:
    sys.exit(0 if answer.status == 200 else f"neuroflow health: metrics answered {answer.status}")'
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
