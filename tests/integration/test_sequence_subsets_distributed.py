"""The distributed runtime on a study with only FLAIR and T1 post-contrast (issue 13, section 2), on a real
Orthanc: ingest routes it to the glioma pipeline when the model card the settings point at declares
``min_roles_any`` (read once at start, as ``neuroflow serve`` does) and refuses it, naming T1 and T2, with
version 1's card (trained with all four sequences); the orchestrator and the stage workers, reading the study
from that Orthanc, give the report and the SEG the embedded run gives (the same qualification, reference
series, zero channels and not-assessable regions)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom import dcmread

from neuroflow.core import topics
from neuroflow.core.bus import InMemoryBus
from neuroflow.core.config import GLIOMA_PIPELINE, NeuroflowSettings, PipelineModels
from neuroflow.core.dicom_io import FolderDicomSink
from neuroflow.core.inference import OnnxRuntimeBackend
from neuroflow.core.model_card import ModelRef
from neuroflow.core.orthanc import OrthancDicomSource
from neuroflow.core.records import FolderRecordStore
from neuroflow.core.roles import SeriesRole
from neuroflow.core.state import WorkflowStatus
from neuroflow.core.volume_store import FolderVolumeStore
from neuroflow.devtools.dicom_writer import write_study
from neuroflow.devtools.scanner_presets import Vendor
from neuroflow.ingest.service import IngestService, IngestSettings
from neuroflow.ingest.window_store import SqliteWindowStore
from neuroflow.orchestrator.pipelines import glioma_pipeline
from neuroflow.preprocess.worker import PreprocessHandler
from neuroflow.proto.neuroflow.v1 import events_pb2
from neuroflow.results.report import StudyReport
from neuroflow.results.worker import ResultsHandler
from neuroflow.runtime.distributed import routed_inputs
from neuroflow.runtime.embedded import run_glioma
from neuroflow.segmentation.worker import SegmentationHandler
from tests.e2e.conftest import tcga_volumes
from tests.integration.test_distributed_inprocess import FAST, PRE, RES, SEG, _cluster, publish
from tests.servers.orthanc import OrthancPair
from tests.subset_model_repository import subset_model_repository

WINDOW_S = 1.0
# The in-process harness's settings, with stage deadlines a whole real study meets on a busy 2-core machine.
PATIENT = FAST.model_copy(update={"stage_timeout_s": {"preprocess": 900.0, "segmentation": 900.0, "results": 300.0}})
PRESENT = {SeriesRole.FLAIR, SeriesRole.T1CE}


def _ingest(orthancs: OrthancPair, settings: NeuroflowSettings, windows: Path) -> tuple[IngestService, InMemoryBus]:
    bus = InMemoryBus()
    models = {GLIOMA_PIPELINE: settings.models.glioma}
    return IngestService(orthancs.site_client, SqliteWindowStore(windows), bus, IngestSettings(
        site="test-site", pipelines=[GLIOMA_PIPELINE], models=models, wait_window_s=WINDOW_S, lease_s=2.0,
        inputs=routed_inputs(settings))), bus


@pytest.mark.slow
def test_a_flair_t1ce_study_is_routed_by_the_card_and_the_workers_give_the_embedded_result(
    orthancs: OrthancPair, tmp_path: Path,
) -> None:
    settings = NeuroflowSettings(inference_threads=2, model_repository=subset_model_repository(tmp_path / "models"))
    written = write_study({r: v for r, v in tcga_volumes().items() if r in PRESENT}, tmp_path / "study",
                          vendor=Vendor.GE, seed="tcga-flair-t1ce-distributed")
    # Two ingests follow the feed from now: one with version 1's card (all four sequences required), one with
    # a card that allows subsets.
    version_1 = NeuroflowSettings(models=PipelineModels(glioma=ModelRef(name="glioma_unet", version=1)))
    shipped, shipped_bus = _ingest(orthancs, version_1, tmp_path / "shipped.sqlite")
    ingest, _ = _ingest(orthancs, settings, tmp_path / "windows.sqlite")
    for path in sorted((tmp_path / "study").rglob("IM*")):
        orthancs.site_client.upload(path.read_bytes())

    shipped.poll_changes(now=1000.0)
    assert shipped.trigger_due(now=1000.0 + WINDOW_S + 0.1) == []
    (refused,) = [events_pb2.RoutingFailed.FromString(m.value)
                  for m in shipped_bus.poll(topics.ROUTING_FAILED, "test", 10)]
    assert refused.reason == events_pb2.RoutingFailed.MISSING_SEQUENCE
    assert "no T1 or T2 series found" in refused.message

    ingest.poll_changes(now=1000.0)
    (ready,) = ingest.trigger_due(now=1000.0 + WINDOW_S + 0.1)
    assert {s.role: s.series_instance_uid for s in ready.series} == {
        r.value: written.series[r].series_instance_uid for r in PRESENT}

    backend = OnnxRuntimeBackend(settings.model_repository, settings.inference_threads)
    source = OrthancDicomSource(orthancs.site_client)
    embedded = run_glioma(source, tmp_path / "embedded", settings, backend)
    assert embedded.sequences_missing == [SeriesRole.T1, SeriesRole.T2] and embedded.not_assessable == {}

    sink, volumes, reports = FolderDicomSink(tmp_path / "sink"), FolderVolumeStore(tmp_path / "volumes"), tmp_path / "r"
    for cluster in _cluster(tmp_path, {GLIOMA_PIPELINE: glioma_pipeline(settings.models)}, PATIENT,
                            records=FolderRecordStore(tmp_path / "records")):
        wid = publish(cluster.bus, ready)
        cluster.start_orchestrator()
        cluster.start_worker(PRE, PreprocessHandler(source, volumes, backend, settings))
        cluster.start_worker(SEG, SegmentationHandler(volumes, backend, settings))
        cluster.start_worker(RES, ResultsHandler(source, sink, volumes, cluster.bus, reports))
        deadline = time.monotonic() + 1800
        while (record := cluster.state.get(wid)) is None or record.status not in (
                WorkflowStatus.SUCCEEDED, WorkflowStatus.FAILED, WorkflowStatus.DEAD_LETTERED):
            assert time.monotonic() < deadline, f"distributed run did not finish: {record}"
            time.sleep(0.5)
        assert record.status == WorkflowStatus.SUCCEEDED, record.detail

    report = StudyReport.model_validate_json((reports / ready.study.study_key / wid / "report.json").read_text())
    assert report.sequences_missing == embedded.sequences_missing
    assert report.not_assessable == embedded.not_assessable
    assert {s.used_as for s in report.series} == PRESENT
    assert report.volumes_ml == embedded.volumes_ml and report.volumes_ml is not None and report.volumes_ml.WT > 0
    assert report.registration.keys() == embedded.registration.keys() == {SeriesRole.FLAIR}
    # The same reference (the T1CE), the same inputs: the same SEG identity in both runtimes, stored once beside
    # the SR and the overlay images.
    stored = sink.stored()
    assert str(dcmread(tmp_path / "embedded" / "seg.dcm").SOPInstanceUID) in stored
    assert str(dcmread(tmp_path / "embedded" / "sr.dcm").SOPInstanceUID) in stored and len(set(stored)) == len(stored)
