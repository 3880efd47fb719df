"""The distributed runtime's PACS objects match the embedded runtime's (issue 13, section 4), on real Orthancs
(the site's, which the workers read and store to, and a PACS it forwards to), with the orchestrator and the
stage workers in threads over the in-memory bus:

* a glioma workflow that fails puts the failure notice (SR and Secondary Capture image, saying the study could
  not be processed and why) into the PACS, while the workflow stays failed; the notice task on the bus carries
  no patient identifier; a study ingest refuses for the glioma pipeline (sequences missing) gets one too;
* a result from other inputs (a new model version) supersedes the study's earlier result as version 2, naming
  its SR as predecessor; a redelivery of the same inputs rebuilds version 2 in place.

A small T1CE series and a fixed label map stand in for preprocessing and segmentation: the stages under test
are the orchestrator's and the results stage's."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest

from neuroflow.core import topics
from neuroflow.core.bus import InMemoryBus
from neuroflow.core.config import (
    GLIOMA_PIPELINE,
    DeliverySettings,
    NeuroflowSettings,
    PipelineModels,
    ResultObjectSettings,
)
from neuroflow.core.delivery import DeliveryLoop
from neuroflow.core.dicom_io import study_key
from neuroflow.core.errors import SeriesRejected
from neuroflow.core.handoff import GeometrySummary, PreprocessSummary
from neuroflow.core.model_card import ModelRef
from neuroflow.core.orthanc import OrthancClient, OrthancDicomSink, OrthancDicomSource
from neuroflow.core.roles import SeriesRole
from neuroflow.core.state import WorkflowStatus, notice_workflow_id
from neuroflow.core.state_schedules import DeliveryStatus
from neuroflow.core.volume import Geometry, Volume
from neuroflow.core.volume_store import FolderVolumeStore
from neuroflow.devtools.dicom_writer import write_study
from neuroflow.ingest.service import IngestService, IngestSettings
from neuroflow.ingest.window_store import SqliteWindowStore
from neuroflow.orchestrator.pipelines import build_input, glioma_pipeline
from neuroflow.proto.neuroflow.v1 import common_pb2, events_pb2, tasks_pb2
from neuroflow.results.dicom_sr import sr_texts
from neuroflow.results.notice import FAILED_HEADLINE
from neuroflow.results.worker import ResultsHandler
from neuroflow.runtime.distributed import routed_inputs
from tests.integration.test_distributed_inprocess import FAST, PRE, RES, SEG, _cluster, publish
from tests.servers.orthanc import PACS_MODALITY, OrthancPair

REASON = "the T1CE series has slices of two sizes"


@dataclass(frozen=True)
class Study:
    folder: Path
    ready: events_pb2.StudyReady
    label_map: Volume
    patient: tuple[str, str]  # PatientID, PatientName as written


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    """A small T1CE series, its StudyReady for the glioma pipeline, and a label map on its grid."""
    geometry = Geometry(spacing=(1.0, 1.0, 2.0), origin=(-24.0, -24.0, -10.0),
                        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), size=(48, 48, 10))
    image = Volume(np.random.default_rng(3).integers(0, 400, size=(10, 48, 48)).astype(np.int16), geometry)
    folder = tmp_path_factory.mktemp("pacs-objects-distributed")
    written = write_study({SeriesRole.T1CE: image}, folder, seed="pacs-objects-distributed")
    labels = np.zeros((10, 48, 48), dtype=np.uint8)
    labels[3:7, 18:30, 18:30] = 2
    labels[4:6, 22:26, 22:26] = 3
    summary = PreprocessSummary(reference_geometry=GeometrySummary.of(geometry), brain_volume_ml=20.0)
    series = written.series[SeriesRole.T1CE]
    uid = written.study_instance_uid
    ready = events_pb2.StudyReady(
        schema_version=topics.SCHEMA_VERSION, pipeline="glioma", input_hash="small-v1",
        priority=common_pb2.PRIORITY_ROUTINE,
        study=common_pb2.StudyRef(study_instance_uid=uid, study_key=study_key(uid), site="test"),
        series=[common_pb2.SeriesRef(series_instance_uid=series.series_instance_uid, role="T1CE",
                                     instance_count=10)])
    first = pydicom.dcmread(sorted(folder.rglob("IM*"))[0], stop_before_pixels=True)
    return Study(folder, ready, summary.attach(Volume(labels, geometry)), (str(first.PatientID),
                                                                           str(first.PatientName)))


def _upload(orthancs: OrthancPair, study: Study) -> None:
    for path in sorted(study.folder.rglob("IM*")):
        orthancs.site_client.upload(path.read_bytes())


def _instances(client: OrthancClient, modality: str) -> list[pydicom.Dataset]:
    """Every instance of ``modality`` the Orthanc holds, read back as DICOM."""
    read = [pydicom.dcmread(io.BytesIO(client.instance_file(i["ID"])))
            for i in client.get_json("/instances?expand", what="list instances")]
    return [ds for ds in read if ds.Modality == modality]


def test_a_failed_glioma_workflow_puts_a_notice_saying_why_into_the_pacs(
    orthancs: OrthancPair, study: Study, tmp_path: Path,
) -> None:
    _upload(orthancs, study)
    source, sink = OrthancDicomSource(orthancs.site_client), OrthancDicomSink(orthancs.site_client)
    volumes = FolderVolumeStore(tmp_path / "volumes")

    def preprocess(task: tasks_pb2.TaskRequested) -> tasks_pb2.PreprocessOutput:
        raise SeriesRejected(task.study.study_key, REASON, stage="preprocess")  # not retryable

    pipeline = glioma_pipeline(PipelineModels())
    for cluster in _cluster(tmp_path, {pipeline.name: pipeline}, FAST, destination=PACS_MODALITY):
        wid = publish(cluster.bus, study.ready)
        cluster.start_orchestrator()
        cluster.start_worker(PRE, preprocess)
        cluster.start_worker(RES, ResultsHandler(source, sink, volumes, cluster.bus, tmp_path / "reports"))
        assert cluster.wait_for(wid, WorkflowStatus.FAILED) == WorkflowStatus.FAILED
        deadline = time.monotonic() + 60
        while not cluster.state.deliveries(workflow_id=notice_workflow_id(wid)):
            assert time.monotonic() < deadline, "the failure notice was never scheduled for delivery"
            time.sleep(0.1)
        loop = DeliveryLoop(cluster.state, sink, DeliverySettings(backoff_s=0.2, backoff_max_s=0.4), holder="r1")
        while (delivery := cluster.state.deliveries(workflow_id=notice_workflow_id(wid))[0]).status \
                == DeliveryStatus.PENDING:
            assert time.monotonic() < deadline, "the failure notice was never delivered"
            loop.deliver_due()
            time.sleep(0.1)
        assert delivery.status == DeliveryStatus.DELIVERED, delivery.last_error
        record = cluster.state.get(wid)
        assert record is not None and record.status == WorkflowStatus.FAILED  # a notice is no result
        # The notice task carries the stage and the reason, never the patient's identity.
        tasks = cluster.read_all(topics.task_topic(RES), tasks_pb2.TaskRequested.FromString)
        (notice_task,) = [t for t in tasks if t.results.HasField("failure")]
        assert notice_task.results.failure.failed_stage == "preprocess"
        assert REASON in notice_task.results.failure.reason and not notice_task.results.failure.retryable
        wire = notice_task.SerializeToString()
        assert all(value.encode() not in wire for value in study.patient if value)

    # In the PACS: the notice SR and the image a plain viewer shows, in the study, saying why.
    (sr,) = _instances(orthancs.pacs_client, "SR")
    (image,) = _instances(orthancs.pacs_client, "OT")
    assert sr.StudyInstanceUID == image.StudyInstanceUID == study.ready.study.study_instance_uid
    assert str(sr.PatientID) == study.patient[0]  # filed under the patient, in the PACS only
    texts = " ".join(sr_texts(sr))
    assert FAILED_HEADLINE in texts and REASON in texts
    assert image.BurnedInAnnotation == "YES" and image.pixel_array.shape == (512, 512, 3)


def test_a_study_ingest_refuses_for_the_glioma_pipeline_gets_a_notice_in_the_pacs(
    orthancs: OrthancPair, study: Study, tmp_path: Path,
) -> None:
    # Version 1's card needs all four sequences: the T1CE-only study is refused at routing, as in the embedded run.
    version_1 = NeuroflowSettings(models=PipelineModels(glioma=ModelRef(name="glioma_unet", version=1)))
    source, sink = OrthancDicomSource(orthancs.site_client), OrthancDicomSink(orthancs.site_client)
    pipeline = glioma_pipeline(version_1.models)
    for cluster in _cluster(tmp_path, {pipeline.name: pipeline}, FAST, destination=PACS_MODALITY):
        ingest = IngestService(orthancs.site_client, SqliteWindowStore(tmp_path / "windows.sqlite"), cluster.bus,
                               IngestSettings(site="test", pipelines=[GLIOMA_PIPELINE],
                                              models={GLIOMA_PIPELINE: version_1.models.glioma}, wait_window_s=1.0,
                                              lease_s=2.0, inputs=routed_inputs(version_1)))
        _upload(orthancs, study)
        ingest.poll_changes(now=1000.0)
        assert ingest.trigger_due(now=1002.0) == []  # refused: no StudyReady
        cluster.start_orchestrator()
        cluster.start_worker(RES, ResultsHandler(source, sink, FolderVolumeStore(tmp_path / "volumes"), cluster.bus,
                                                 tmp_path / "reports"))
        loop = DeliveryLoop(cluster.state, sink, DeliverySettings(backoff_s=0.2, backoff_max_s=0.4), holder="r1")
        deadline = time.monotonic() + 60
        while loop.sent == 0:
            assert time.monotonic() < deadline, "the notice of the refused study never reached the PACS"
            loop.deliver_due()
            time.sleep(0.1)
        assert cluster.state.list() == []  # no workflow: routing refused the study
    (sr,) = _instances(orthancs.pacs_client, "SR")
    assert len(_instances(orthancs.pacs_client, "OT")) == 1
    texts = " ".join(sr_texts(sr))
    assert FAILED_HEADLINE in texts and "routing: no T1 or T2 or FLAIR series found" in texts, texts


def _results_task(study: Study, label_ref: common_pb2.VolumeRef, version: int) -> tasks_pb2.TaskRequested:
    """The results task the orchestrator sends after segmentation with glioma_unet ``version``."""
    pipeline = glioma_pipeline(PipelineModels(glioma=ModelRef(name="glioma_unet", version=version)))
    segmented = tasks_pb2.TaskDone(segmentation=tasks_pb2.SegmentationOutput(label_map=label_ref,
                                                                            model=pipeline.model))
    wid = f"wf-small-v{version}"
    task = tasks_pb2.TaskRequested(schema_version=topics.SCHEMA_VERSION, workflow_id=wid, stage=RES, attempt=1,
                                   idempotency_key=f"{wid}.results", study=study.ready.study, pipeline="glioma")
    task.results.CopyFrom(build_input(RES, pipeline, study.ready, {SEG: segmented}, destination=""))
    return task


def test_a_result_from_a_new_model_supersedes_the_earlier_one_in_orthanc_as_version_2(
    orthancs: OrthancPair, study: Study, tmp_path: Path,
) -> None:
    _upload(orthancs, study)
    volumes = FolderVolumeStore(tmp_path / "volumes")
    label_ref = volumes.put_ref("small/labels", study.label_map)
    results = ResultsHandler(OrthancDicomSource(orthancs.site_client), OrthancDicomSink(orthancs.site_client),
                             volumes, InMemoryBus(), tmp_path / "reports", ResultObjectSettings())
    first = results(_results_task(study, label_ref, 1))
    (sr_1,) = [sr for sr in _instances(orthancs.site_client, "SR") if str(sr.SOPInstanceUID) in first.sop_instance_uids]
    assert not sr_1.SeriesDescription.endswith(" v2") and "PredecessorDocumentsSequence" not in sr_1

    second = results(_results_task(study, label_ref, 2))
    again = results(_results_task(study, label_ref, 2))  # a redelivery: the same objects, still version 2
    assert list(again.sop_instance_uids) == list(second.sop_instance_uids)
    stored = _instances(orthancs.site_client, "SR")
    (sr_2,) = [sr for sr in stored if str(sr.SOPInstanceUID) in second.sop_instance_uids]
    assert len(stored) == 2 and sr_2.SOPInstanceUID != sr_1.SOPInstanceUID
    assert sr_2.SeriesDescription.endswith(" v2")
    named = sr_2.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert named.ReferencedSOPInstanceUID == sr_1.SOPInstanceUID
    (seg_2,) = [seg for seg in _instances(orthancs.site_client, "SEG")
                if str(seg.SOPInstanceUID) in second.sop_instance_uids]
    assert seg_2.SeriesDescription.endswith(" v2")
