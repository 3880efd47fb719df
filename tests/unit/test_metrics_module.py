"""neuroflow.core.metrics: every metric's labels are bounded, and a process exports only what it recorded
(a worker must not export `neuroflow_kafka_up 0` or `neuroflow_storage_up 0` just by importing the module)."""

from __future__ import annotations

import subprocess
import sys

from neuroflow.core import metrics


def test_every_metric_has_only_bounded_labels_and_at_least_one() -> None:
    for metric in metrics.DEFINED:
        assert metric._labelnames, metric._name
        assert set(metric._labelnames) <= metrics.ALLOWED_LABELS, metric._name
    assert not metrics.ALLOWED_LABELS & {"study", "study_key", "patient", "patient_id", "workflow", "uid",
                                         "series", "accession"}


def test_a_process_that_recorded_nothing_exports_no_neuroflow_sample() -> None:
    code = ("import neuroflow.core.metrics\nfrom prometheus_client import generate_latest\n"
            "print(generate_latest().decode())")
    exposition = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                timeout=60).stdout
    samples = [line for line in exposition.splitlines() if line.startswith("neuroflow_")]
    assert samples == []
    assert "# HELP neuroflow_kafka_up" in exposition  # defined, just without a value
