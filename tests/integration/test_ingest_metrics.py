"""Ingest metrics against a real Orthanc: a new study counts as received and triggered, with the time from
its last instance to its trigger; a late series counts as a re-trigger, not as a new study; a study missing
a sequence counts as a routing failure by reason; a routed study counts for its pipeline. None of it carries
the study's identifiers."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest

from neuroflow.core.bus import InMemoryBus
from neuroflow.core.config import GLIOMA_PIPELINE
from neuroflow.core.dicom_io import study_key
from neuroflow.core.roles import SeriesRole
from neuroflow.devtools.dicom_writer import write_study
from neuroflow.devtools.scanner_presets import Vendor
from neuroflow.ingest.service import IngestService
from neuroflow.ingest.window_store import SqliteWindowStore
from tests.integration.test_ingest import FILES, WINDOW_S, _crop, _settings, _upload
from tests.servers.orthanc import OrthancPair

SITE = "ingest-metrics-site"


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"site": SITE, **labels}) or 0.0


@pytest.fixture
def ingest(orthancs: OrthancPair, tmp_path: Path) -> IngestService:
    return IngestService(orthancs.site_client, SqliteWindowStore(tmp_path / "windows.sqlite"), InMemoryBus(),
                         _settings(site=SITE))


def test_new_study_then_late_series_count_as_received_triggered_and_retriggered(
    orthancs: OrthancPair, ingest: IngestService, tmp_path: Path,
) -> None:
    names = ("neuroflow_ingest_studies_received_total", "neuroflow_ingest_wait_window_triggers_total",
             "neuroflow_ingest_late_series_retriggers_total", "neuroflow_ingest_last_instance_to_trigger_seconds_count",
             "neuroflow_ingest_last_instance_to_trigger_seconds_sum")
    before = {name: value(name) for name in names}
    routed_before = value("neuroflow_ingest_studies_routed_total", pipeline=GLIOMA_PIPELINE)

    written = write_study({r: _crop(r) for r in FILES}, tmp_path / "study", vendor=Vendor.GE, seed="metrics-1")
    _upload(orthancs, tmp_path / "study")
    ingest.poll_changes(now=5000.0)
    assert len(ingest.trigger_due(now=5000.0 + WINDOW_S + 0.5)) == 1
    write_study({SeriesRole.DWI: _crop(SeriesRole.T2)}, tmp_path / "late", vendor=Vendor.GE, seed="metrics-1")
    _upload(orthancs, tmp_path / "late")
    ingest.poll_changes(now=6000.0)
    assert len(ingest.trigger_due(now=6000.0 + WINDOW_S + 0.5)) == 1

    delta = {name: value(name) - before[name] for name in names}
    assert delta["neuroflow_ingest_studies_received_total"] == 1  # the late series is not a new study
    assert delta["neuroflow_ingest_wait_window_triggers_total"] == 2
    assert delta["neuroflow_ingest_late_series_retriggers_total"] == 1
    assert delta["neuroflow_ingest_last_instance_to_trigger_seconds_count"] == 2
    assert delta["neuroflow_ingest_last_instance_to_trigger_seconds_sum"] == pytest.approx(2 * (WINDOW_S + 0.5))
    assert value("neuroflow_ingest_studies_routed_total", pipeline=GLIOMA_PIPELINE) - routed_before == 2
    exposition = generate_latest(REGISTRY).decode()
    for identifier in (written.study_instance_uid, study_key(written.study_instance_uid),
                       *(s.series_instance_uid for s in written.series.values())):
        assert identifier not in exposition


def test_study_missing_a_sequence_counts_as_a_routing_failure_by_reason(
    orthancs: OrthancPair, ingest: IngestService, tmp_path: Path,
) -> None:
    labels = {"pipeline": GLIOMA_PIPELINE, "reason": "MISSING_SEQUENCE"}
    before = value("neuroflow_ingest_routing_failures_total", **labels)
    roles = [SeriesRole.T1, SeriesRole.T1CE, SeriesRole.T2]
    write_study({r: _crop(r) for r in roles}, tmp_path / "study", vendor=Vendor.SIEMENS, seed="metrics-2")
    _upload(orthancs, tmp_path / "study")
    ingest.poll_changes(now=9000.0)
    assert ingest.trigger_due(now=9000.0 + WINDOW_S + 0.1) == []
    assert value("neuroflow_ingest_routing_failures_total", **labels) - before == 1
