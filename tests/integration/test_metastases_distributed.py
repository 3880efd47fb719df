"""The metastases pipeline in the distributed runtime (issue 15): the orchestrator's spec registers onto the T1CE;
the segmentation stage runs the shipped metastases model (ONNX Runtime) and hands on the probability with the
preprocess summary; the results stage, reading the T1CE from a real Orthanc, splits the probability into lesions
on the T1CE's own grid and stores the SEG (one segment per lesion), the RTSTRUCT, the SR and the overlay there,
as the embedded runtime writes them. A fixed probability stands in for the model in the results test."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from neuroflow.core import topics
from neuroflow.core.atlas import attach_transform, transform_of
from neuroflow.core.bus import InMemoryBus
from neuroflow.core.config import DEFAULT_MODEL_REPOSITORY, METASTASES_PIPELINE, NeuroflowSettings, PipelineModels
from neuroflow.core.dicom_io import study_key
from neuroflow.core.handoff import GeometrySummary, PreprocessSummary
from neuroflow.core.inference import OnnxRuntimeBackend
from neuroflow.core.orthanc import OrthancDicomSink, OrthancDicomSource
from neuroflow.core.roles import SeriesRole
from neuroflow.core.volume import Geometry, Volume
from neuroflow.core.volume_store import FolderVolumeStore
from neuroflow.devtools.dicom_writer import write_study
from neuroflow.orchestrator.pipelines import metastases_pipeline
from neuroflow.proto.neuroflow.v1 import common_pb2, events_pb2, tasks_pb2
from neuroflow.results.worker import ResultsHandler
from neuroflow.segmentation.worker import SegmentationHandler
from tests.integration.stage_tasks import ball, stage_task
from tests.servers.orthanc import OrthancPair

PRE, SEG, RES = common_pb2.STAGE_PREPROCESS, common_pb2.STAGE_SEGMENTATION, common_pb2.STAGE_RESULTS
# The T1CE as acquired (1 x 1 x 2 mm) and the common 1 mm grid over the same extent.
T1CE_GRID = Geometry(spacing=(1.0, 1.0, 2.0), origin=(-24.0, -24.0, -10.0),
                     direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), size=(48, 48, 10))
COMMON_GRID = Geometry(spacing=(1.0, 1.0, 1.0), origin=(-24.0, -24.0, -10.0),
                       direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), size=(48, 48, 20))


def _ready(uid: str, t1ce_series: str) -> events_pb2.StudyReady:
    return events_pb2.StudyReady(
        schema_version=topics.SCHEMA_VERSION, pipeline=METASTASES_PIPELINE, input_hash="mets-small",
        priority=common_pb2.PRIORITY_ROUTINE,
        study=common_pb2.StudyRef(study_instance_uid=uid, study_key=study_key(uid), site="test"),
        series=[common_pb2.SeriesRef(series_instance_uid=t1ce_series, role="T1CE", instance_count=10)])


def _task(stage: common_pb2.Stage.ValueType, ready: events_pb2.StudyReady,
          done: dict[common_pb2.Stage.ValueType, tasks_pb2.TaskDone]) -> tasks_pb2.TaskRequested:
    return stage_task(stage, metastases_pipeline(PipelineModels()), ready, done, "wf-mets")


def test_the_spec_registers_onto_the_t1ce() -> None:
    ready = _ready("1.2.3", "1.2.3.4")
    assert _task(PRE, ready, {}).preprocess.reference_role == "T1CE"


def test_the_segmentation_stage_hands_on_the_probability_with_the_summary(tmp_path: Path) -> None:
    volumes = FolderVolumeStore(tmp_path / "volumes")
    brain = np.zeros((20, 48, 48), dtype=np.uint8)
    brain[2:18, 4:44, 4:44] = 1
    t1ce = np.where(brain > 0, np.random.default_rng(1).normal(0.0, 1.0, brain.shape), 0.0).astype(np.float32)
    t1ce[ball((0.0, 0.0, 0.0), 4.0)] = 3.5  # a bright ball where a small metastasis would be
    summary = PreprocessSummary(reference_geometry=GeometrySummary.of(T1CE_GRID), brain_volume_ml=25.0)
    pre = tasks_pb2.TaskDone(preprocess=tasks_pb2.PreprocessOutput(
        brain_mask=volumes.put_ref("k/wf/brain_mask", summary.attach(Volume(brain, COMMON_GRID)))))
    pre.preprocess.volumes["T1CE"].CopyFrom(volumes.put_ref("k/wf/t1ce", Volume(t1ce, COMMON_GRID)))
    handler = SegmentationHandler(volumes, OnnxRuntimeBackend(DEFAULT_MODEL_REPOSITORY, 1), NeuroflowSettings())
    out = handler(_task(SEG, _ready("1.2.3", "1.2.3.4"), {PRE: pre}))
    probability = volumes.get_ref(out.label_map)
    values = np.asarray(probability.array)
    assert values.dtype == np.float32 and values.shape == brain.shape
    assert float(values.min()) >= 0.0 and float(values.max()) <= 1.0
    assert float(np.abs(values[brain == 0]).max()) == 0.0  # nothing outside the brain
    assert PreprocessSummary.of(probability).brain_volume_ml == 25.0
    # The ball is lesion (probability ~0.8): the brain was registered onto the atlas template for the results
    # stage, and the transform came through the volume store.
    assert float(values.max()) >= 0.5 and transform_of(probability) is not None
    assert not out.region_volumes_ml


def test_the_results_stage_stores_lesion_objects_in_orthanc(orthancs: OrthancPair, tmp_path: Path) -> None:
    image = Volume(np.random.default_rng(3).integers(0, 400, size=(10, 48, 48)).astype(np.int16), T1CE_GRID)
    written = write_study({SeriesRole.T1CE: image}, tmp_path / "in", seed="mets-distributed")
    for path in sorted((tmp_path / "in").rglob("IM*")):
        orthancs.site_client.upload(path.read_bytes())
    volumes = FolderVolumeStore(tmp_path / "volumes")
    probability = np.zeros((20, 48, 48), dtype=np.float32)
    probability[ball((-8.0, 0.0, 0.0), 6.0)] = 0.9  # Met 1: 12 mm
    probability[ball((12.0, 6.0, 2.0), 3.0)] = 0.8  # Met 2: 6 mm
    summary = PreprocessSummary(reference_geometry=GeometrySummary.of(T1CE_GRID), brain_volume_ml=25.0)
    # The identity as the brain-to-template transform: the patient's points are the template's.
    stored_probability = attach_transform(summary.attach(Volume(probability, COMMON_GRID)), sitk.AffineTransform(3))
    ref = volumes.put_ref("k/wf/label_map", stored_probability)
    segmented = tasks_pb2.TaskDone(segmentation=tasks_pb2.SegmentationOutput(
        label_map=ref, model=metastases_pipeline(PipelineModels()).model))
    ready = _ready(written.study_instance_uid, written.series[SeriesRole.T1CE].series_instance_uid)
    results = ResultsHandler(OrthancDicomSource(orthancs.site_client), OrthancDicomSink(orthancs.site_client),
                             volumes, InMemoryBus(), tmp_path / "reports")
    out = results(_task(RES, ready, {SEG: segmented}))
    stored = [pydicom.dcmread(io.BytesIO(orthancs.site_client.instance_file(i["ID"])))
              for i in orthancs.site_client.get_json("/instances?expand", what="list instances")]
    ours = [ds for ds in stored if str(ds.SOPInstanceUID) in out.sop_instance_uids]
    by_modality: dict[str, list[pydicom.Dataset]] = {}
    for ds in ours:
        by_modality.setdefault(str(ds.Modality), []).append(ds)
    (seg,), (rtstruct,), (sr,) = by_modality["SEG"], by_modality["RTSTRUCT"], by_modality["SR"]
    assert len(out.sop_instance_uids) == 3 + 10  # and one overlay image per T1CE slice
    assert [str(s.SegmentLabel) for s in seg.SegmentSequence] == ["Met 1", "Met 2"]
    assert [str(r.ROIName) for r in rtstruct.StructureSetROISequence] == ["Met 1", "Met 2"]
    report = json.loads(next((tmp_path / "reports").rglob("report.json")).read_text())
    lesions = report["metastases"]["lesions"]
    assert report["pipeline"] == METASTASES_PIPELINE and report["metastases"]["count"] == 2
    assert lesions[0]["centroid_mm"][0] == pytest.approx(-8.0, abs=1.0)
    assert lesions[0]["longest_axial_diameter_mm"] == pytest.approx(12.0, abs=2.0)
    assert lesions[1]["centroid_mm"][0] == pytest.approx(12.0, abs=1.0)
    # LPS x < 0 is the patient's right: Met 1 lies in the right hemisphere, Met 2 (x > 0) in the left.
    assert ("_R (AAL)" in lesions[0]["location"] or ", right (" in lesions[0]["location"]), lesions[0]["location"]
    assert ("_L (AAL)" in lesions[1]["location"] or ", left (" in lesions[1]["location"]), lesions[1]["location"]
    texts = [str(item.TextValue) for item in _items(sr) if item.get("ValueType") == "TEXT"]
    assert f"Met 1: location {lesions[0]['location']}" in texts
    assert str(sr.SeriesNumber) == str(NeuroflowSettings().results.metastases_sr_series_number)


def _items(dataset: pydicom.Dataset) -> list[pydicom.Dataset]:
    """Every content item of an SR, depth first."""
    out: list[pydicom.Dataset] = []
    for item in dataset.get("ContentSequence", []):
        out += [item, *_items(item)]
    return out
